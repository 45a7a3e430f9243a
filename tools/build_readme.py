"""Write README.md from nbs/index.ipynb (nbdev-readme needs Quarto; this needs nothing).

    python tools/build_readme.py          # write README.md
    python tools/build_readme.py --check  # exit 1 if README.md differs from what index.ipynb gives
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def _text(x): return ''.join(x) if isinstance(x, list) else x

def _outputs(cell):
    out = []
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'stream': out.append(_text(o['text']))
        elif o.get('output_type') in ('execute_result', 'display_data') and 'text/plain' in o.get('data', {}):
            out.append(_text(o['data']['text/plain']) + '\n')
        elif o.get('output_type') == 'error': raise SystemExit(f"index.ipynb has an error output: {o.get('ename')}: {o.get('evalue')}")
    return ''.join(out)

def render(nb_path=ROOT / 'nbs' / 'index.ipynb') -> str:
    nb, parts = json.loads(Path(nb_path).read_text()), []
    for cell in nb['cells']:
        src = _text(cell['source'])
        if cell['cell_type'] == 'markdown':
            parts.append(src.strip() + '\n')
            continue
        lines = src.splitlines()
        if any(re.match(r'#\|\s*(hide|include:\s*false)', l) for l in lines): continue
        code = '\n'.join(l for l in lines if not l.startswith('#|')).strip()
        if not code: continue
        parts.append(f'```python\n{code}\n```\n')
        out = _outputs(cell).rstrip('\n')
        if out: parts.append(f'```\n{out}\n```\n')
    body = '\n'.join(parts)
    body = re.sub(r'\]\((?!https?:|#|/)([^)]+\.ipynb)\)', r'](nbs/\1)', body)   # links between notebooks, from the repository root
    return '<!-- Generated from nbs/index.ipynb by tools/build_readme.py: edit the notebook, not this file. -->\n\n' + body

if __name__ == '__main__':
    text, readme = render(), ROOT / 'README.md'
    if '--check' in sys.argv[1:]:
        if not readme.exists() or readme.read_text() != text:
            sys.exit("README.md is not what nbs/index.ipynb gives: run `uv run python tools/build_readme.py` and commit it.")
        print('README.md matches nbs/index.ipynb')
    else:
        readme.write_text(text); print(f'wrote {readme}')
