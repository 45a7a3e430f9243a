"""Tracking: WandB offline run files read back with wandb's own tool across a resume; plots; logs without progress
bars where output is not a terminal; dry run; status; provenance; no wandb import when it is disabled."""
import json, os, shutil, subprocess, sys, time
from pathlib import Path
import pytest, torch
from conftest import tiny_config, write_config, run_cli, read_rows

def wandb_history(run_file_dir: Path) -> dict:
    "step -> logged values, from an offline run folder, read by `wandb leet inspect --json`."
    wandb_cli = Path(sys.executable).parent / 'wandb'
    r = subprocess.run([str(wandb_cli), 'leet', 'inspect', '--json', str(run_file_dir)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    steps = {}
    for line in r.stdout.splitlines():
        rec = json.loads(line)
        if rec.get('type') == 'history':
            h = rec['history']
            step = int(h['step']['num'])
            assert step not in steps, f'step {step} logged twice in {run_file_dir.name}'
            steps[step] = h['item']
    return steps

def offline_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith('WANDB_')}
    env['HOME'] = str(tmp_path / 'home')            # no ~/.netrc: no API key
    (tmp_path / 'home').mkdir(exist_ok=True)
    return env

def test_wandb_offline_run_continues_across_a_resume_without_duplicate_steps(tmp_path):
    cfg = tiny_config(total_updates=20, updates_per_epoch=10, wandb=dict(enabled=True, project='ml_suite_tests', tags=['t']))
    path = write_config(tmp_path / 'train.yml', cfg)
    env = offline_env(tmp_path)
    r1 = run_cli(path, cwd=tmp_path, env=env)
    assert r1.returncode == 0, r1.stderr
    assert r1.stdout.count('logging offline') == 1 and 'wandb sync' in r1.stdout
    r2 = run_cli(path, 'total_updates=40', cwd=tmp_path, env=env)
    assert r2.returncode == 0, r2.stderr
    runs = sorted((tmp_path / 'wandb').glob('offline-run-*'))
    assert len(runs) == 2 and len({p.name.rsplit('-', 1)[1] for p in runs}) == 1, 'the resumed run keeps its WandB id'
    assert torch.load(tmp_path / 'latest.pt', weights_only=True)['wandb_id'] == runs[0].name.rsplit('-', 1)[1]
    first, second = wandb_history(runs[0]), wandb_history(runs[1])
    assert not set(first) & set(second), 'no step logged by both'
    logged = {row['update']: row for row in read_rows(tmp_path)}
    assert sorted({**first, **second}) == sorted(logged) == list(range(5, 41, 5))
    for step, values in {**first, **second}.items():
        assert values['train_loss'] == pytest.approx(logged[step]['train_loss'])
        assert values['lr'] == pytest.approx(logged[step]['lr'])
        if 'val_loss' in logged[step]: assert values['val_loss'] == pytest.approx(logged[step]['val_loss'])
    assert {'samples_per_s', 'updates_per_s', 'grad_norm', 'tflops'} <= set(second[40])
    # a CPU has no peak: no MFU; the resumed process took the count from its checkpoint
    assert 'mfu' not in second[40] and second[40]['tflops'] == pytest.approx(logged[40]['tflops'])

def test_wandb_is_not_imported_when_disabled(tmp_path):
    code = ("import sys; from ml_suite.train import train; "
            f"t = train({tiny_config(total_updates=5, updates_per_epoch=5, run_dir=str(tmp_path / 'r'))!r}); "
            "assert t.finished; assert 'wandb' not in sys.modules, 'wandb was imported'")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

@pytest.mark.slow
def test_plot_command_writes_a_png_for_two_runs(tmp_path):
    for name, lr in (('a', 3e-3), ('b', 1e-3)):
        path = write_config(tmp_path / name / 'train.yml', tiny_config(total_updates=20, updates_per_epoch=10,
                                                                        optimizer=dict(name='AdamW', learning_rate=lr)))
        assert run_cli(path, cwd=tmp_path).returncode == 0
    out = tmp_path / 'both.png'
    r = subprocess.run([str(Path(sys.executable).parent / 'ml-suite-plot'), str(tmp_path / 'a'), str(tmp_path / 'b'), '-o', str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 10_000
    w, h = int.from_bytes(data[16:20], 'big'), int.from_bytes(data[20:24], 'big')
    assert (w, h) == (1000, 360)
    r = subprocess.run([str(Path(sys.executable).parent / 'ml-suite-plot'), str(tmp_path / 'nope')], capture_output=True, text=True)
    assert r.returncode == 2 and 'has no metrics.jsonl' in r.stderr

def test_no_progress_bar_characters_when_output_is_not_a_terminal(tmp_path):
    r = run_cli(write_config(tmp_path / 'train.yml', tiny_config(total_updates=20, updates_per_epoch=10)), cwd=tmp_path)
    assert r.returncode == 0
    out = r.stdout + r.stderr
    assert '\r' not in out and '\x1b[' not in out and '###' not in out
    lines = [l for l in out.splitlines() if ' update ' in l]
    assert len(lines) == 4 and all('ETA' in l and 'samples/s' in l for l in lines)

def test_progress_bar_on_a_terminal(tmp_path):
    "Under a pseudo-terminal the bar is drawn (with carriage returns), and log lines still appear."
    import pty
    path = write_config(tmp_path / 'train.yml', tiny_config(total_updates=20, updates_per_epoch=10))
    cmd = [sys.executable, '-m', 'ml_suite.train', str(path)]
    out = bytearray()
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(tmp_path); os.environ['TERM'] = 'xterm'; os.execv(sys.executable, cmd)
    while True:
        try: chunk = os.read(fd, 4096)
        except OSError: break
        if not chunk: break
        out += chunk
    os.waitpid(pid, 0)
    text = out.decode(errors='replace')
    assert '\r[' in text and '20/20' in text and 'finished 20 updates' in text

def test_dry_run_builds_and_writes_nothing(tmp_path):
    path = write_config(tmp_path / 'exp' / 'train.yml', tiny_config(total_updates=100, updates_per_epoch=50))
    before = set((tmp_path / 'exp').iterdir())
    r = run_cli(path, '--dry-run', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'parameters' in r.stdout and 'effective batch 8 x 1 accumulation = 8' in r.stdout and 'learning rate' in r.stdout
    assert set((tmp_path / 'exp').iterdir()) == before, 'a dry run writes nothing'

@pytest.mark.slow
def test_status_of_a_finished_and_of_a_running_run(tmp_path):
    path = write_config(tmp_path / 'train.yml', tiny_config(total_updates=20, updates_per_epoch=10))
    assert run_cli(path, cwd=tmp_path).returncode == 0
    status = Path(sys.executable).parent / 'ml-suite-status'
    r = subprocess.run([str(status), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0 and 'updates          20/20' in r.stdout and 'not running' in r.stdout and 'latest.pt' in r.stdout
    best = min(row['val_loss'] for row in read_rows(tmp_path) if 'val_loss' in row)
    assert f'{best:.6g}' in r.stdout
    p = subprocess.Popen([sys.executable, '-m', 'ml_suite.train', str(path), 'total_updates=100000', 'updates_per_epoch=50000'],
                         cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            r = subprocess.run([str(status), str(tmp_path)], capture_output=True, text=True)
            if 'running (pid' in r.stdout: break
            time.sleep(0.5)
        assert f'running (pid {p.pid}' in r.stdout, r.stdout
    finally: p.kill(); p.wait()

def test_each_start_is_recorded(tmp_path):
    path = write_config(tmp_path / 'train.yml', tiny_config(total_updates=10, updates_per_epoch=10))
    assert run_cli(path, cwd=tmp_path).returncode == 0
    assert run_cli(path, 'total_updates=20', cwd=tmp_path).returncode == 0
    starts = [json.loads(l) for l in (tmp_path / 'starts.jsonl').read_text().splitlines()]
    assert len(starts) == 2
    s = starts[1]
    assert 'total_updates=20' in s['argv'] and s['torch'] == torch.__version__ and s['cpus'] == os.cpu_count()
    assert 'lock_sha256' in s or 'packages_sha256' in s

# -- tracking never ends a run (issue 16, item 5) ---------------------------------------------------------------------
FAKE_KEY = '0123456789abcdef' * 2 + '01234567'   # the shape of a classic W&B key (40 hex characters), valid nowhere

def fallback_warnings(text: str) -> list:
    return [l for l in text.splitlines() if ' WARNING wandb: ' in l]

def test_placeholder_key_trains_offline_with_one_warning_and_starts_in_seconds(tmp_path):
    "The original suite's `.env` placeholder: AuthenticationError after 47 s before; now offline at once, one warning."
    cfg = tiny_config(total_updates=20, updates_per_epoch=10, wandb=dict(enabled=True, project='ml_suite_tests'))
    path = write_config(tmp_path / 'train.yml', cfg)
    env = {**offline_env(tmp_path), 'WANDB_API_KEY': 'your_api_key_here', 'PYTHONUNBUFFERED': '1'}
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, '-m', 'ml_suite.train', str(path)], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = None
    while p.poll() is None and first is None:   # the time from the launch to the first logged update
        rows = tmp_path / 'metrics.jsonl'
        if rows.exists() and rows.read_text().strip(): first = time.monotonic() - t0
        time.sleep(0.05)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    first = first if first is not None else time.monotonic() - t0
    assert first < 20, f'{first:.1f} s from the launch to the first update'
    runs = list((tmp_path / 'wandb').glob('offline-run-*'))
    assert len(runs) == 1 and list(runs[0].glob('run-*.wandb')), runs
    assert sorted(wandb_history(runs[0])) == [5, 10, 15, 20]
    warned = fallback_warnings(out)
    assert len(warned) == 1, out
    assert 'not a W&B API key (API key must have 40+ characters, has 17.' in warned[0], warned
    assert warned[0].endswith(f'logging offline in {runs[0]}; upload it later with: wandb sync {runs[0]}'), warned
    assert 'your_api_key_here' not in out + err and 'Traceback' not in out + err

TRACKER = '''
import json, sys, time
from pathlib import Path
from ml_suite.config import WandbConfig
from ml_suite.tracking import WandbTracker, setup_logging, collect_secrets
run_dir = Path(sys.argv[1]); run_dir.mkdir(exist_ok=True); setup_logging(run_dir); collect_secrets()
t0 = time.monotonic()
t = WandbTracker(WandbConfig(enabled=True, mode=sys.argv[2] or None, project='p'), run_dir, {'a': 1})
took = time.monotonic() - t0
t.log({'update': 1, 'train_loss': 0.5}); t.close()
print(json.dumps({'took': took, 'id': t.id}))
'''

def start_tracker(tmp_path, mode, timeout=60, **env):
    "Start a `WandbTracker` as `train` does, in a fresh process; returns (seconds init took, id, output)."
    e = {**offline_env(tmp_path), **env}
    r = subprocess.run([sys.executable, '-c', TRACKER, str(tmp_path / 'run'), mode], env=e, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    res = json.loads(next(l for l in r.stdout.splitlines() if l.startswith('{"took"')))
    return res['took'], res['id'], r.stdout + r.stderr

def test_a_wellformed_key_without_internet_falls_back_offline_in_seconds(tmp_path):
    "mode online, a 40-hex key, no route to W&B (this machine): before, a CommError after minutes; now offline at once."
    took, run_id, out = start_tracker(tmp_path, 'online', WANDB_API_KEY=FAKE_KEY)
    assert took < 15, f'{took:.1f} s'
    warned = fallback_warnings(out)
    assert len(warned) == 1 and 'cannot be reached' in warned[0] and 'wandb sync ' in warned[0], out
    assert list((tmp_path / 'run' / 'wandb').glob(f'offline-run-*-{run_id}/run-{run_id}.wandb'))
    assert FAKE_KEY not in out

def test_an_online_init_that_fails_is_retried_offline(tmp_path):
    "The server answers, but refuses the key: wandb.init raises; the run is tracked offline instead."
    import http.server, threading
    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get('Content-Length') or 0))
            self.send_response(401); self.send_header('Content-Type', 'application/json'); self.end_headers()
            self.wfile.write(b'{"errors": [{"message": "invalid API key"}]}')
        do_GET = do_POST
        def log_message(self, *a): pass
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        took, run_id, out = start_tracker(tmp_path, '', WANDB_API_KEY=FAKE_KEY,
                                          WANDB_BASE_URL=f'http://127.0.0.1:{server.server_address[1]}')
    finally: server.shutdown()
    warned = fallback_warnings(out)
    assert len(warned) == 1 and 'wandb.init failed online (' in warned[0] and 'wandb sync ' in warned[0], out
    assert list((tmp_path / 'run' / 'wandb').glob(f'offline-run-*-{run_id}/run-{run_id}.wandb'))
    assert took < 30 and FAKE_KEY not in out
