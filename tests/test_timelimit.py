"The time keeper on a run whose budget ends mid-training: it uses at least 90% of the budget and never overruns."
import subprocess, sys, time
import pytest, torch
from conftest import tiny_config, write_config, read_rows
from test_slurm_train import SLEEPY

@pytest.mark.slow   # a 40-s budget: slow, so that the default run stays under 6 minutes (CI runs it with -m slow)
def test_time_limit_stops_in_time_with_a_checkpoint(tmp_path):
    (tmp_path / 'sleepy.py').write_text(SLEEPY)
    limit = 40
    cfg = tiny_config(model=dict(type='sleepy:SleepyUNet', width=4, depth=1, sleep=0.05), total_updates=100000,
                      updates_per_epoch=200, log_every=50, time_limit=limit)
    path = write_config(tmp_path / 'train.yml', cfg)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, '-m', 'ml_suite.train', str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - t0
    assert r.returncode == 3, r.stdout + r.stderr                      # stopped early, with a checkpoint
    assert 0.9 * limit <= wall <= limit, f'{wall:.1f} s of a {limit} s budget'
    assert '(time limit); saving a checkpoint' in r.stdout
    ck = torch.load(tmp_path / 'latest.pt', weights_only=True)
    assert 0 < ck['updates'] < 100000 and ck['updates'] == max(row['update'] for row in read_rows(tmp_path)) or ck['updates'] > 0
    assert ck['timekeeper']['update']['n'] > 0
