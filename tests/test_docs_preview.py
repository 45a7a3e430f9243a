"""The docs check catches what it promises to catch: a cell error, an image that does not load, a missing API entry, a
dead link. (CI runs the check on the real notebooks: `python tools/docs_preview.py`.)"""
import json, shutil, sys
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / 'tools'))
docs_preview = pytest.importorskip('docs_preview')
pytestmark = pytest.mark.skipif(not (shutil.which('pandoc') and shutil.which('chromium')),
                                reason='needs pandoc and chromium (apt-get install pandoc chromium)')

def nb(title, cells):
    fm = {'cell_type': 'raw', 'metadata': {}, 'source': f'---\ntitle: {title}\noutput-file: {title.lower()}.html\n---\n'}
    return {'cells': [fm, *cells], 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}

def md(src): return {'cell_type': 'markdown', 'metadata': {}, 'source': src}
def code(src, outputs): return {'cell_type': 'code', 'metadata': {}, 'source': src, 'outputs': outputs, 'execution_count': None}

PNG_1PX = ('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==')

def test_the_check_finds_errors_broken_images_missing_api_and_dead_links(tmp_path, monkeypatch):
    proc, nbs = tmp_path / '_proc', tmp_path / 'nbs'
    proc.mkdir(); nbs.mkdir()
    good = nb('Good', [md('# Section\n\nA [link](bad.html#part), a [wrong anchor](bad.html#section) and a [dead one](missing.html).'),
                       code('1+1', [{'output_type': 'display_data', 'metadata': {}, 'data': {'image/png': PNG_1PX}}])])
    bad = nb('Bad', [md('## Part'),
                     code('1/0', [{'output_type': 'error', 'ename': 'ZeroDivisionError', 'evalue': 'division by zero',
                                   'traceback': ['Traceback (most recent call last)', 'ZeroDivisionError: division by zero']}]),
                     md('![a picture](nowhere.png)')])
    (proc / 'good.ipynb').write_text(json.dumps(good)); (proc / 'bad.ipynb').write_text(json.dumps(bad))
    (nbs / 'sidebar.yml').write_text('website:\n  sidebar:\n    contents:\n      - good.ipynb\n      - bad.ipynb\n')
    monkeypatch.setattr(docs_preview, 'OUT', tmp_path / 'preview')
    monkeypatch.setattr(docs_preview, 'ROOT', tmp_path)
    monkeypatch.setattr(docs_preview, 'api_names', lambda: {'good.html': {'train': True, 'EXIT_OK': False}})
    pages = docs_preview.build(proc)
    problems, seen = docs_preview.check(pages)
    text = '\n'.join(problems)
    assert seen['good.html']['images'] == 1 and not seen['good.html']['broken']     # the plot shows
    assert 'bad.html: 1 cell(s) show an error' in text
    assert 'bad.html: images that do not load' in text
    assert 'good.html: link to a missing page missing.html' in text
    assert 'good.html: no API entry for train' in text
    assert 'good.html: EXIT_OK is exported but the page never names it' in text
    assert 'good.html: link to a missing anchor bad.html#section' in text
    assert 'bad.html#part' not in text                                              # a good anchor passes
