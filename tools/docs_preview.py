"""Offline preview of the docs site, and its check in a headless browser.

`nbdev-docs` needs Quarto. Where Quarto cannot be installed (CI here), this script builds the same content:
nbdev processes the notebooks exactly as it does for Quarto (`_proc/`: `show_doc` rendered, hidden and exported
cells removed, links resolved), then pandoc turns each processed page into HTML with the site's sidebar, and headless
Chromium loads every page and checks it:

- the page renders (the browser ran its script and the page has its title),
- each function and class in a module's `__all__` has its API entry (a `show_doc` heading) on the module's page, and
  each exported constant is named on it,
- every image loads (plots included) and no cell shows an error or a traceback,
- every local link points to a page or an anchor that exists.

Usage:
    python tools/docs_preview.py            # build into _preview/ and check; screenshots in _preview/screenshots/
    python tools/docs_preview.py --no-check # build only

Needs pandoc and chromium (Debian: `apt-get install pandoc chromium`).
"""
from __future__ import annotations
import argparse, base64, html, importlib, json, os, re, shutil, subprocess, sys, tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / '_preview'
SITE = 'https://ml-suite.github.io/ml_suite/'

def process_notebooks() -> Path:
    "Run nbdev's own docs processing (what `nbdev-docs` hands to Quarto) into `_proc/`."
    from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar
    from nbdev.doclinks import _build_modidx
    from nbdev.serve import proc_nbs
    os.chdir(ROOT)
    refresh_quarto_yml(); _build_modidx()
    nbdev_sidebar.__wrapped__()   # does nothing with `custom_sidebar = true` (ours: nbs/sidebar.yml)
    return proc_nbs(n_workers=2, force=True)

# ---- one page: processed notebook -> markdown -> HTML

def _front_matter(nb) -> dict:
    import yaml
    c = nb['cells'][0] if nb['cells'] else None
    if c and c['cell_type'] == 'raw':
        src = ''.join(c['source']).strip()
        if src.startswith('---'): return yaml.safe_load(src.strip('-\n')) or {}
    return {}

def _directives(src: str) -> tuple[dict, str]:
    d, body = {}, []
    for line in src.split('\n'):
        m = re.match(r'^#\|\s*([\w-]+)\s*:?\s*(.*)$', line)
        if m and not body: d[m.group(1)] = m.group(2).strip()
        else: body.append(line)
    return d, '\n'.join(body).strip('\n')

def _fence(text: str, cls: str) -> str:
    ticks = '`' * max(3, max((len(m) for m in re.findall(r'`+', text)), default=0) + 1)
    return f'{ticks} {{.{cls}}}\n{text.rstrip()}\n{ticks}\n'

def _output_md(o: dict) -> str:
    t = o['output_type']
    if t == 'stream':
        return _fence(''.join(o['text']), 'cell-output-' + o.get('name', 'stdout'))
    if t == 'error':
        tb = re.sub(r'\x1b\[[0-9;]*m', '', '\n'.join(o.get('traceback', [])))
        return f'::: {{.cell-error}}\n{_fence(tb or o.get("ename", "error"), "cell-output-error")}:::\n'
    data = o.get('data', {})
    if 'image/png' in data:
        b64 = ''.join(data['image/png']).replace('\n', '')
        return f'```{{=html}}\n<img class="cell-output-image" src="data:image/png;base64,{b64}">\n```\n'
    if 'text/html' in data: return '```{=html}\n' + ''.join(data['text/html']) + '\n```\n'
    if 'text/markdown' in data: return ''.join(data['text/markdown']) + '\n'
    if 'text/plain' in data: return _fence(''.join(data['text/plain']), 'cell-output-display')
    return ''

def notebook_markdown(nb) -> str:
    "The page body as pandoc markdown, cell by cell, as Quarto would lay it out."
    parts = []
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'markdown': parts.append(src + '\n')
        elif c['cell_type'] == 'code':
            d, body = _directives(src)
            if d.get('include') == 'false': continue
            if body and d.get('echo') != 'false': parts.append(_fence(body, 'python'))
            if d.get('output') != 'false':
                parts += [_output_md(o) for o in c.get('outputs', [])]
    return '\n'.join(parts)

def _pandoc(md: str) -> tuple[str, str]:
    "(table of contents, body) as HTML."
    with tempfile.TemporaryDirectory() as d:
        tpl = Path(d) / 't.html'; tpl.write_text('$toc$\n<!--BODY-->\n$body$\n')
        r = subprocess.run(['pandoc', '-f', 'markdown+link_attributes+fenced_divs+raw_attribute', '-t', 'html5',
                            '--toc', '--toc-depth=2', '--template', str(tpl), '--no-highlight'],
                           input=md, capture_output=True, text=True)
    if r.returncode: raise RuntimeError(f'pandoc failed: {r.stderr}')
    toc, body = r.stdout.split('<!--BODY-->', 1)
    return toc, body

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title} – ml_suite</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0; display: grid; grid-template-columns: 15rem minmax(0, 1fr) 14rem; }}
header {{ grid-column: 1 / 4; background: #2780e3; color: white; padding: .6rem 1.2rem; font-weight: 600; }}
header a {{ color: white; text-decoration: none; }}
nav.sidebar, nav.toc {{ padding: 1rem; font-size: .9rem; }} nav.sidebar a {{ display: block; padding: .15rem 0; }}
nav.sidebar a.active {{ font-weight: 700; }} nav.sidebar .section {{ margin-top: .7rem; color: #555; font-weight: 600; }}
main {{ padding: 0 1.5rem 3rem; max-width: 60rem; }}
pre {{ background: #f6f8fa; padding: .6rem; overflow-x: auto; font-size: .85rem; }}
pre.cell-output-stdout, pre.cell-output-display, pre.cell-output-stderr {{ background: #fff; border-left: 3px solid #ccc; }}
img {{ max-width: 100%; }} table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ddd; padding: .2rem .5rem; }}
.description {{ color: #555; font-size: 1.1rem; }}
</style></head>
<body>
<header><a href="{root}index.html">ml_suite</a></header>
<nav class="sidebar">{sidebar}</nav>
<main><h1 class="title">{title}</h1><p class="description">{description}</p>
{body}
</main>
<nav class="toc"><strong>On this page</strong>{toc}</nav>
<script>
window.addEventListener('load', () => {{
  const imgs = [...document.images];
  document.body.dataset.check = JSON.stringify({{
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 60)),
    errors: document.querySelectorAll('div.cell-error').length,
    title: document.querySelector('h1.title').textContent,
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
    links: [...document.querySelectorAll('main a[href]')].map(a => a.getAttribute('href')),
    text: document.querySelector('main').innerText,
  }});
}});
</script>
</body></html>
"""

def _sidebar_entries(nbs: Path) -> list:
    "The sidebar as nbdev writes it (`sidebar.yml`): paths of notebooks, with sections for folders."
    import yaml
    def walk(items, section=None):
        for it in items:
            if isinstance(it, str): yield section, it
            elif isinstance(it, dict) and 'contents' in it: yield from walk(it['contents'], it.get('section'))
            elif isinstance(it, dict) and 'section' in it: yield from walk(it.get('contents', []), it['section'])
    sb = yaml.safe_load((nbs / 'sidebar.yml').read_text())['website']['sidebar']['contents']
    return list(walk(sb))

n_images = {}   # page -> plots and images among the notebook's outputs

def build(proc: Path) -> list[Path]:
    "Write one HTML page per processed notebook into `_preview/`; return the pages."
    if OUT.exists(): shutil.rmtree(OUT)
    OUT.mkdir()
    nbs = sorted(p for p in proc.rglob('*.ipynb'))
    meta, out_name = {}, {}
    n_images.clear()
    for p in nbs:
        nb = json.loads(p.read_text())
        fm = _front_matter(nb)
        rel = p.relative_to(proc)
        out_name[str(rel)] = str(rel.parent / fm.get('output-file', rel.with_suffix('.html').name))
        meta[str(rel)] = (nb, fm)
    for f in proc.rglob('*'):  # images and other files the pages refer to
        if f.is_file() and f.suffix not in ('.ipynb', '.yml', '.txt', '.css'):
            (OUT / f.relative_to(proc)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, OUT / f.relative_to(proc))
    entries = _sidebar_entries(ROOT / 'nbs')
    pages = []
    def one(rel):
        nb, fm = meta[rel]
        page = out_name[rel]
        depth = page.count('/')
        root = '../' * depth
        md = notebook_markdown(nb)
        md = md.replace(SITE, root)   # links nbdev resolved to the published site point into the preview
        for src_nb, html_name in out_name.items():   # links to notebooks point to their pages, as Quarto rewrites them
            md = md.replace(f']({src_nb})', f']({root}{html_name})').replace(f']({Path(src_nb).name})', f']({root}{html_name})')
        toc, body = _pandoc(md)
        side, last = [], None
        for section, nbp in entries:
            if section != last and section: side.append(f'<div class="section">{html.escape(section)}</div>')
            last = section
            target = out_name.get(nbp)
            if target is None: continue
            t = meta[nbp][1].get('title', nbp)
            side.append(f'<a href="{root}{target}"{" class=active" if nbp == rel else ""}>{html.escape(t)}</a>')
        dst = OUT / page
        dst.parent.mkdir(parents=True, exist_ok=True)
        n_images[page] = sum('image/png' in o.get('data', {}) for c in nb['cells'] for o in c.get('outputs', []))
        dst.write_text(PAGE.format(title=html.escape(fm.get('title', rel)), description=html.escape(fm.get('description', '')),
                                   sidebar='\n'.join(side), toc=toc, body=body, root=root))
        return dst
    with ThreadPoolExecutor(4) as ex: pages = list(ex.map(one, sorted(meta)))
    missing = [nbp for _, nbp in entries if nbp not in out_name]
    if missing: raise SystemExit(f'nbs/sidebar.yml lists notebooks that were not processed: {missing}')
    unlisted = sorted(set(out_name) - {nbp for _, nbp in entries})
    if unlisted: raise SystemExit(f'nbs/sidebar.yml does not list {unlisted}: add them, or readers will not find them')
    return pages

# ---- the browser check

def chromium(*args, timeout=60) -> subprocess.CompletedProcess:
    exe = shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
    if exe is None: raise SystemExit('chromium is not installed: `apt-get install chromium` (Debian) to check the preview')
    with tempfile.TemporaryDirectory() as prof:
        return subprocess.run([exe, '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                               '--disable-component-update', '--no-first-run', '--disable-sync', '--hide-scrollbars',
                               f'--user-data-dir={prof}', *args], capture_output=True, text=True, timeout=timeout)

def rendered(page: Path) -> dict:
    "What the browser saw on `page` once it loaded."
    r = chromium('--virtual-time-budget=5000', '--dump-dom', page.as_uri())
    m = re.search(r'data-check="([^"]*)"', r.stdout)
    if not m: return {'error': f'the page did not render (chromium exit {r.returncode}): {r.stderr[-300:]}'}
    return json.loads(html.unescape(m.group(1)))

def api_names() -> dict:
    "{page: {name: is it a function or class}} for the names in every exported module's `__all__`."
    sys.path.insert(0, str(ROOT))
    modidx = importlib.import_module('ml_suite._modidx').d['syms']
    out = {}
    for mod, syms in modidx.items():
        if not syms: continue
        page = next(iter(syms.values()))[0].split('#')[0]
        m = importlib.import_module(mod)
        out[page] = {n: callable(getattr(m, n)) for n in getattr(m, '__all__', [])}
    return out

def check(pages: list[Path]) -> list[str]:
    problems, seen = [], {}
    with ThreadPoolExecutor(2) as ex:
        for page, res in zip(pages, ex.map(rendered, pages)): seen[page.relative_to(OUT).as_posix()] = res
    for page, res in seen.items():
        if 'error' in res: problems.append(f'{page}: {res["error"]}'); continue
        if not res['title'].strip(): problems.append(f'{page}: no title')
        if res['broken']: problems.append(f'{page}: images that do not load: {res["broken"]}')
        if res['images'] < n_images.get(page, 0): problems.append(f'{page}: the notebook has {n_images[page]} image outputs, the page shows {res["images"]}')
        if res['errors']: problems.append(f'{page}: {res["errors"]} cell(s) show an error')
        for href in res['links']:
            if re.match(r'^[a-z]+:', href) or href.startswith('#') and href[1:] in res['ids']: continue
            target, _, anchor = href.partition('#')
            tpath = (OUT / page).parent / target if target else OUT / page
            tkey = tpath.resolve().relative_to(OUT.resolve()).as_posix() if tpath.resolve().is_relative_to(OUT.resolve()) else None
            if target and not tpath.exists(): problems.append(f'{page}: link to a missing page {href}')
            elif anchor and tkey in seen and anchor not in seen[tkey].get('ids', []):
                problems.append(f'{page}: link to a missing anchor {href}')
    for page, names in api_names().items():
        ids = set(seen.get(page, {}).get('ids', []))
        if page not in seen: problems.append(f'{page}: the module page is missing'); continue
        for n, documented in names.items():   # functions and classes get a `show_doc` entry; constants are named in the text
            if documented and n.lower() not in ids: problems.append(f'{page}: no API entry for {n}')
            if not documented and n not in seen[page].get('text', ''): problems.append(f'{page}: {n} is exported but the page never names it')
    return problems, seen

def screenshots(pages: list[Path]) -> list[Path]:
    shots = OUT / 'screenshots'; shots.mkdir(exist_ok=True)
    home = OUT / 'index.html'
    tutorial = next((p for p in pages if p.relative_to(OUT).parts[0] == 'tutorials'), None)
    out = []
    for p in [home, tutorial]:
        if p is None: continue
        png = shots / (p.relative_to(OUT).as_posix().replace('/', '_').replace('.html', '.png'))
        chromium('--window-size=1280,1600', '--virtual-time-budget=5000', f'--screenshot={png}', p.as_uri())
        if not png.exists() or png.stat().st_size < 10_000: raise SystemExit(f'screenshot of {p} failed')
        out.append(png)
    return out

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--no-check', action='store_true', help='build the preview without the browser check')
    a = ap.parse_args()
    for tool in ['pandoc'] + ([] if a.no_check else ['chromium']):
        if not shutil.which(tool): raise SystemExit(f'{tool} is not installed: `apt-get install {tool}` (Debian)')
    proc = process_notebooks()
    pages = build(proc)
    print(f'preview: {len(pages)} pages in {OUT.relative_to(ROOT)}/')
    if a.no_check: return
    problems, seen = check(pages)
    n_img = sum(r.get('images', 0) for r in seen.values())
    n_api = sum(len(v) for v in api_names().values())
    shots = screenshots(pages)
    print(f'browser check: {len(seen)} pages rendered, {n_api} API entries, {n_img} images, screenshots: '
          + ', '.join(str(s.relative_to(ROOT)) for s in shots))
    if problems:
        print('\n'.join(['docs check FAILED:'] + problems), file=sys.stderr); sys.exit(1)
    print('docs check passed')

if __name__ == '__main__': main()
