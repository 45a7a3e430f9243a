"""Check that the errors the notebooks show are errors the current code still gives.

The notebooks are the docs: a stored output that says `ml-suite-train: error: unrecognized arguments` for a command
that works today misleads every reader, and `nbdev-test` cannot see it (it runs the cells, it does not compare what
they print). CI therefore runs the notebooks with `nbdev-test --save`, which writes the fresh outputs into the
working tree, and then this script compares them with the committed ones:

- every *error line* of a committed output must appear in the fresh output of the same cell: a Python error
  (`ValueError: ...`), a traceback, a line of a command's `prog: error: ...`, an `[exit code N]` line, or any line
  written to stderr that says error;
- the comparison ignores what changes from run to run: temporary folders, the repository's own path, process ids,
  dates, times and other numbers (but not the `N` of `[exit code N]`).

Usage:
    python tools/check_outputs.py              # committed (HEAD) notebooks against the working tree
    python tools/check_outputs.py --rev main   # against another revision
Exit code 1, with each stale line listed, if a committed error is no longer produced. Rerun the notebook with
`nbdev-test --path NB --save` and commit it.
"""
from __future__ import annotations
import argparse, json, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_ERROR = re.compile(r'(^|\s)[\w.-]+: error:|Traceback \(most recent call last\)|^\[exit code \d+\]$|'
                    r'^[A-Z]\w*(Error|Exception)\b')
_EXIT = re.compile(r'^\[exit code (\d+)\]$')

def _text(o:dict)->tuple[str, str]:
    "An output's text and its kind (`stderr`, `stdout`, `error` or `result`)."
    if o.get('output_type') == 'stream': return ''.join(o.get('text', '')), o.get('name', 'stdout')
    if o.get('output_type') == 'error': return f"{o.get('ename', '')}: {o.get('evalue', '')}", 'error'
    return ''.join(o.get('data', {}).get('text/plain', '')), 'result'

def normalize(line:str, root:str=str(ROOT))->str:
    "`line` without what changes between runs: paths of temporary folders and of the repository, numbers."
    line = re.sub(r'\x1b\[[0-9;]*m', '', line).strip()
    m = _EXIT.match(line)
    if m: return line
    line = line.replace(root, '<repo>')
    line = re.sub(r'/work/main\b', '<repo>', line)   # notebooks saved in the developers' checkout
    line = re.sub(r'/tmp/[\w.-]+', '<tmp>', line)
    line = re.sub(r'\d+', '0', line)
    return re.sub(r'\s+', ' ', line)

def error_lines(cell:dict)->list[str]:
    "The normalized error lines of a code cell's outputs."
    out = []
    for o in cell.get('outputs', []):
        text, kind = _text(o)
        for ln in text.splitlines():
            s = ln.strip()
            if kind == 'error' or _ERROR.search(s) or (kind == 'stderr' and re.search(r'\berror\b', s, re.I)):
                out.append(normalize(s))
    return out

def all_lines(cell:dict)->set[str]:
    "Every normalized line of a code cell's outputs."
    return {normalize(ln) for o in cell.get('outputs', []) for ln in _text(o)[0].splitlines()}

def stale_errors(stored:dict, fresh:dict)->list[tuple[str, str]]:
    "`(cell id, line)` for each error line of `stored` that the same cell of `fresh` no longer prints."
    now = {c.get('id'): c for c in fresh.get('cells', []) if c.get('cell_type') == 'code'}
    bad = []
    for c in stored.get('cells', []):
        if c.get('cell_type') != 'code' or c.get('id') not in now: continue
        have = all_lines(now[c['id']])
        bad += [(c['id'], ln) for ln in error_lines(c) if ln not in have]
    return bad

def _committed(path:Path, rev:str)->dict|None:
    r = subprocess.run(['git', 'show', f'{rev}:{path.relative_to(ROOT).as_posix()}'], cwd=ROOT, capture_output=True,
                       text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None

def main(argv=None)->int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rev', default='HEAD', help='the revision whose notebooks hold the committed outputs')
    a = p.parse_args(argv)
    bad, n = [], 0
    for nb in sorted((ROOT / 'nbs').rglob('*.ipynb')):
        if '.ipynb_checkpoints' in nb.parts or '_proc' in nb.parts: continue
        old = _committed(nb, a.rev)
        if old is None: continue
        n += 1
        bad += [(nb.relative_to(ROOT), cid, ln) for cid, ln in stale_errors(old, json.loads(nb.read_text()))]
    for nb, cid, ln in bad:
        print(f"{nb} cell {cid}: the committed output shows an error the code no longer gives: {ln}")
    if bad:
        print(f"{len(bad)} stale error line(s) in the notebooks: rerun them with `nbdev-test --path NB --save` and "
              f"commit the outputs.")
        return 1
    print(f"outputs: every error shown in {n} notebooks is still what the code gives")
    return 0

if __name__ == '__main__': sys.exit(main())
