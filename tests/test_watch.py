"""`watch` in a real Jupyter kernel: a run submitted from the notebook (locally, in the background) is followed with a
status table and live curves that update in place while it trains, and the cell returns when the run has ended."""
import json, time
import pytest
from conftest import tiny_config, write_config
from test_notebook_experience import run_cell
from test_slurm_train import SLEEPY

jupyter_client = pytest.importorskip('jupyter_client')
pytestmark = pytest.mark.slow

def test_watch_updates_while_the_run_trains_and_returns_at_its_end(tmp_path):
    (tmp_path / 'sleepy.py').write_text(SLEEPY)
    cfg = tiny_config(model=dict(type='sleepy:SleepyUNet', width=4, depth=1, sleep=0.05), total_updates=200,
                      updates_per_epoch=50, log_every=10, progress=False)
    path = write_config(tmp_path / 'train.yml', cfg)
    run = tmp_path / 'run'
    km, kc = jupyter_client.manager.start_new_kernel(kernel_name='python3', cwd=str(tmp_path))
    try:
        reply, _ = run_cell(kc, "from ml_suite.submit import submit, watch\n"
                                f"job = submit({str(path)!r}, ['run_dir={run}'], local=True)")
        assert reply['content']['status'] == 'ok', reply['content']
        during = []      # display updates that arrived while the run was still training
        def note(m):
            if m and m['msg_type'] == 'update_display_data' and not (run / 'ends.jsonl').exists():
                during.append(m)
        reply, msgs = run_cell(kc, "rows = watch(job, every=0.5)\nprint('STATES', [r['state'] for r in rows])",
                               timeout=240, on_msg=note)
        assert reply['content']['status'] == 'ok', reply['content']
        assert len(during) >= 2, f"{len(during)} updates during the run"
        assert any('image/png' in m['content'].get('data', {}) for m in during)          # the curves
        assert any('text/html' in m['content'].get('data', {}) for m in during)          # the status table
        text = ''.join(m['content'].get('text', '') for m in msgs if m['msg_type'] == 'stream')
        assert "STATES ['finished']" in text, text
        # it returned at the run's end: the end was recorded before the cell finished, and not long before
        end = json.loads((run / 'ends.jsonl').read_text().splitlines()[-1])
        assert end['outcome'] == 'finished' and end['updates'] == 200
        from datetime import datetime
        assert time.time() - datetime.strptime(end['time'], '%Y-%m-%dT%H:%M:%S%z').timestamp() < 30
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)

def test_a_local_job_cancelled_saves_and_submitting_again_continues_it(tmp_path, monkeypatch):
    from ml_suite.submit import submit
    (tmp_path / 'sleepy.py').write_text(SLEEPY)
    cfg = tiny_config(model=dict(type='sleepy:SleepyUNet', width=4, depth=1, sleep=0.05), total_updates=400,
                      updates_per_epoch=100, log_every=10, progress=False)
    path = write_config(tmp_path / 'train.yml', cfg)
    monkeypatch.chdir(tmp_path)
    job = submit(path, [f'run_dir={tmp_path}/run'], local=True)
    deadline = time.monotonic() + 120
    while not ((job.run_dir / 'metrics.jsonl').exists() and job.status()[0]['state'] == 'running'):
        assert time.monotonic() < deadline, job.status()
        time.sleep(0.2)
    with pytest.raises(Exception, match='is in use'):       # one job per run directory
        submit(path, [f'run_dir={tmp_path}/run'], local=True)
    assert 'SIGTERM' in job.cancel()
    rows = job.wait(timeout=60, every=0.2)
    assert rows[0]['state'] == 'stopped', rows
    stopped = json.loads((job.run_dir / 'ends.jsonl').read_text().splitlines()[-1])
    assert stopped['outcome'] == 'stopped' and 0 < stopped['updates'] < 400
    again = submit(path, [f'run_dir={tmp_path}/run'], local=True)
    assert again.wait(timeout=180, every=0.5)[0]['state'] == 'finished'
    log = sorted(job.run_dir.glob('local-*.out'))[-1].read_text()
    assert f"resumed from {job.run_dir / 'latest.pt'} at update {stopped['updates']}" in log, log[-2000:]
