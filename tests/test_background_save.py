"""Background checkpoint flushes: a SIGKILL while the thread fsyncs and renames leaves only complete files under the
names `latest`, `previous` and `best`, and the run directory resumes from them."""
import subprocess, sys
import pytest, torch
from ml_suite.core import RunError
from ml_suite.checkpoint import Checkpointer, REQUIRED_KEYS

KILLED_MID_FLUSH = '''
import os, signal, sys, torch
from ml_suite.checkpoint import Checkpointer
ck = Checkpointer(sys.argv[1])
base = {'model': {}, 'optimizer': {}, 'scheduler': {}, 'data': {}}
ck.save({**base, 'updates': 1}, best=True)
ck.save({**base, 'updates': 2}, best=True)
ck.save({**base, 'updates': 3, 'w': torch.randn(2 ** 24)}, best=True, background=True)   # 64 MB: the flush takes a while
if sys.argv[2] == 'now': os.kill(os.getpid(), signal.SIGKILL)                             # while the thread works
ck.wait(); print('durable', flush=True); os.kill(os.getpid(), signal.SIGKILL)
'''

@pytest.mark.parametrize('when', ['now', 'after_wait'])
def test_sigkill_during_a_background_flush_leaves_complete_files(tmp_path, when):
    r = subprocess.run([sys.executable, '-c', KILLED_MID_FLUSH, str(tmp_path), when], capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    names = {p: torch.load(tmp_path / p, weights_only=True)['updates'] for p in ('latest.pt', 'previous.pt', 'best.pt')}
    if when == 'after_wait': assert names == {'latest.pt': 3, 'previous.pt': 2, 'best.pt': 3}, names
    else:
        assert names['latest.pt'] in (2, 3) and names['best.pt'] <= names['latest.pt'], names   # old or new, never half
    ck = Checkpointer(tmp_path)
    ck.remove_stale()
    path, state = ck.load_newest_good(warn=pytest.fail)
    assert path.name == 'latest.pt' and state['updates'] == names['latest.pt']
    assert not list(tmp_path.glob('.*.tmp'))

def test_an_error_in_the_background_is_raised_by_the_next_wait(tmp_path):
    ck = Checkpointer(tmp_path)
    ck.save({'updates': 1}, background=True); ck.wait()
    (tmp_path / 'latest.pt').unlink(); (tmp_path / 'latest.pt').mkdir()   # a folder where the file must go: the thread fails
    ck.save({'updates': 2}, background=True)
    with pytest.raises(RunError, match=r'cannot write checkpoint .*latest.pt .*latest.pt is still update 1'): ck.wait()   # one paragraph, as in the foreground
    assert not list(tmp_path.glob('.*.tmp'))
    assert ck.wait() is None                                             # reported once
