"The docs check fails on a committed error output that the current code no longer prints (tools/check_outputs.py)."
import copy, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
import check_outputs as co

def _nb(*outputs, cid='c1'):
    return {'cells': [{'cell_type': 'code', 'id': cid, 'source': 'sh("ml-suite-train x.yml")', 'outputs': list(outputs)}]}

def _stream(text, name='stdout'): return {'output_type': 'stream', 'name': name, 'text': text}

def test_stale_error_is_found():
    # tutorial 1 as it was at 5ab0233: an error for a command that now works
    stored = _nb(_stream('$ ml-suite-train cfg.yml run_dir=/tmp/tmpab12/cli total_updates=150\n'
                         'ml-suite-train: error: unrecognized arguments: run_dir=/work/main/runs/t/cli\n[exit code 2]\n'))
    fresh = _nb(_stream('$ ml-suite-train cfg.yml run_dir=/tmp/tmpzz99/cli total_updates=150\n'
                        'update 150/150 train_loss 0.01\n[exit code 0]\n'))
    bad = co.stale_errors(stored, fresh)
    assert [ln for _, ln in bad] == ['ml-suite-train: error: unrecognized arguments: run_dir=<repo>/runs/t/cli',
                                     '[exit code 2]']

def test_same_error_with_other_paths_and_numbers_passes():
    stored = _nb(_stream("ml-suite-train: error: run directory /work/main/runs/x is in use by another run "
                         "(pid 11941 on vm, started 2026-11-29 18:59:02)\n", 'stderr'),
                 {'output_type': 'error', 'ename': 'ConfigError', 'evalue': "batch_size must be > 0, got 0", 'traceback': []})
    fresh = copy.deepcopy(stored)
    fresh['cells'][0]['outputs'][0]['text'] = ("ml-suite-train: error: run directory /tmp/ci7/runs/x is in use by "
                                               "another run (pid 207 on vm, started 2026-12-01 10:00:00)\n")
    assert co.normalize(stored['cells'][0]['outputs'][0]['text'], '/tmp/ci7') == \
           co.normalize(fresh['cells'][0]['outputs'][0]['text'], '/tmp/ci7')
    fresh['cells'][0]['outputs'][0]['text'] = fresh['cells'][0]['outputs'][0]['text'].replace('/tmp/ci7', '/work/main')
    assert co.stale_errors(stored, fresh) == []

def test_exit_code_is_compared_exactly():
    assert co.stale_errors(_nb(_stream('[exit code 3]\n')), _nb(_stream('[exit code 0]\n'))) == [('c1', '[exit code 3]')]
    assert co.stale_errors(_nb(_stream('[exit code 0]\n')), _nb(_stream('[exit code 0]\n'))) == []

def test_committed_notebooks_against_cleared_outputs():
    # every committed notebook agrees with itself; clearing the outputs makes each of its error lines stale
    n_err = 0
    for nb in sorted((ROOT / 'nbs').rglob('*.ipynb')):
        stored = co._committed(nb, 'HEAD')
        if stored is None: continue
        assert co.stale_errors(stored, stored) == []
        cleared = copy.deepcopy(stored)
        for c in cleared['cells']: c['outputs'] = []
        errs = [ln for c in stored['cells'] if c['cell_type'] == 'code' for ln in co.error_lines(c)]
        assert len(co.stale_errors(stored, cleared)) == len(errs)
        n_err += len(errs)
    assert n_err > 5   # the tutorials show real error messages
