"""Crash safety and exact resume: SIGKILL at random moments (some inside checkpoint writes and validations), rerun the
same command, and the final weights equal those of an uninterrupted run, bit for bit."""
import os, random, signal, subprocess, sys, threading, time
from pathlib import Path
import pytest, torch
from conftest import tiny_config, write_config, run_cli, read_rows

MARKED = '''
import os
from pathlib import Path
from ml_suite.data import HeatDataset

class MarkedHeat(HeatDataset):
    "The built-in heat data; reading validation sample 0 touches $VAL_MARKER, so a test can tell validation is running."
    def __getitem__(self, i):
        if self.split == 'val' and i == 0 and os.environ.get('VAL_MARKER'): Path(os.environ['VAL_MARKER']).touch()
        return super().__getitem__(i)
'''

TOTAL = 600   # long enough that twelve kills (each costs the updates since the last checkpoint) land before the end

def kill_config(workers):
    return tiny_config(dataset=dict(name='marked:MarkedHeat', size=16, modes=4, num_samples=256),
                       model=dict(type='unet', width=16, depth=2, criterion='mse'), batch_size=8, total_updates=TOTAL,
                       updates_per_epoch=25, log_every=25, num_workers=workers, max_grad_norm=1.0,
                       checkpoint=dict(every_updates=10),
                       lr_scheduler=dict(first_stage=dict(name='LinearLR', start_factor=0.1, num_updates=20),
                                         second_stage=dict(name='CosineAnnealingLR', num_updates=-1)))

class Run:
    "The CLI in a subprocess, its output read by a thread so the test can wait for 'training has started'."
    def __init__(self, cfg_path, cwd, env):
        self.p = subprocess.Popen([sys.executable, '-m', 'ml_suite.train', str(cfg_path)], cwd=cwd, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.out, self.started = [], threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
    def _read(self):
        for line in self.p.stdout:
            self.out.append(line)
            if 'run directory' in line: self.started.set()
        self.started.set()
    def wait_until(self, pred, timeout=60, poll=0.0005):
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.p.poll() is None:
            if pred(): return True
            time.sleep(poll)
        return False
    def kill(self):
        self.p.send_signal(signal.SIGKILL); self.p.wait()

def kill_and_rerun(tmp_path, cfg, seed, min_kills=10):
    "Run `cfg` once uninterrupted, then again with SIGKILLs (at random, in saves, in validations) and reruns."
    (tmp_path / 'marked.py').write_text(MARKED)
    ref = run_cli(write_config(tmp_path / 'ref' / 'train.yml', cfg), cwd=tmp_path, env={'PYTHONPATH': str(tmp_path)})
    assert ref.returncode == 0, ref.stderr
    run_dir, marker = tmp_path / 'killed', tmp_path / 'validating'
    cfg_path = write_config(run_dir / 'train.yml', cfg)
    env = {**os.environ, 'PYTHONPATH': str(tmp_path), 'VAL_MARKER': str(marker)}
    rng, kills, reached, modes = random.Random(seed), [], [], ['random', 'in_save', 'in_validation']
    for attempt in range(40):
        mode = modes[len(kills) % 3] if len(kills) < 12 else None
        marker.unlink(missing_ok=True)
        r = Run(cfg_path, tmp_path, env)
        r.started.wait(120)
        hit = False
        if mode == 'random': hit = r.wait_until(lambda: False, timeout=rng.uniform(0.05, 1.5)) or r.p.poll() is None
        elif mode == 'in_save': hit = r.wait_until(lambda: any(run_dir.glob('.latest.pt.*.tmp')))
        elif mode == 'in_validation': hit = r.wait_until(marker.exists)
        if mode and hit and r.p.poll() is None:
            r.kill()
            kills.append(mode)
            ck = torch.load(run_dir / 'latest.pt', weights_only=True) if (run_dir / 'latest.pt').exists() else None
            assert ck is None or ck['updates'] <= TOTAL         # latest.pt is always a complete file
            reached.append(ck and ck['updates'])
            continue
        assert r.p.wait(300) == 0, ''.join(r.out)
        break
    assert len(kills) >= min_kills and {'random', 'in_save', 'in_validation'} <= set(kills), (kills, reached)
    updates = [row['update'] for row in read_rows(run_dir)]
    assert updates == sorted(set(updates)), 'metrics.jsonl has each update once, in order'
    assert not list(run_dir.glob('.*.tmp')), 'no temporary files left behind'
    return (torch.load(tmp_path / 'ref' / 'latest.pt', weights_only=True),
            torch.load(run_dir / 'latest.pt', weights_only=True), run_dir)

def assert_same_training_state(a, b):
    "Model weights and Adam's moments bitwise equal."
    for k in a['model']: assert torch.equal(a['model'][k], b['model'][k]), k
    for sa, sb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert torch.equal(sa['exp_avg'], sb['exp_avg']) and torch.equal(sa['exp_avg_sq'], sb['exp_avg_sq'])

@pytest.mark.slow
@pytest.mark.parametrize('workers', [0, 2])
def test_sigkill_anywhere_then_rerun_gives_bitwise_identical_weights(tmp_path, workers):
    a, b, run_dir = kill_and_rerun(tmp_path, kill_config(workers), workers)
    assert a['updates'] == b['updates'] == TOTAL
    assert_same_training_state(a, b)

@pytest.mark.slow
def test_sigkill_anywhere_with_ema_and_early_stopping_ends_where_an_uninterrupted_run_ends(tmp_path):
    "The weights, the EMA's average, the early-stopping counter and the stop itself: all as in an uninterrupted run."
    cfg = kill_config(0)
    # min_delta: early stopping ends this run at update 475 of 600, after a dozen kills
    cfg['callbacks'] = [{'name': 'ema', 'decay': 0.95},
                        {'name': 'early_stopping', 'monitor': 'val_loss', 'patience': 2, 'min_delta': 0.00005}]
    a, b, run_dir = kill_and_rerun(tmp_path, cfg, seed=7)
    assert a['ended'] and a['ended'] == b['ended'] and a['updates'] == b['updates'] < TOTAL, (a['ended'], b['ended'])
    assert_same_training_state(a, b)
    assert a['callbacks'].keys() == b['callbacks'].keys() == {'0:EMA', '1:EarlyStopping'}
    ea, eb = a['callbacks']['0:EMA'], b['callbacks']['0:EMA']
    assert ea['n_averaged'] == eb['n_averaged'] and ea['weights'].keys() == a['eval_model'].keys()
    for k in ea['weights']: assert torch.equal(ea['weights'][k], eb['weights'][k]), k
    for k in a['eval_model']: assert torch.equal(a['eval_model'][k], b['eval_model'][k]), k
    assert a['callbacks']['1:EarlyStopping'] == b['callbacks']['1:EarlyStopping']
    # the rerun of a finished run says so, and trains nothing
    r = run_cli(run_dir / 'train.yml', cwd=tmp_path, env={'PYTHONPATH': str(tmp_path)})
    assert r.returncode == 0 and 'the run has finished' in r.stdout + r.stderr, r.stdout[-2000:]
    assert torch.load(run_dir / 'latest.pt', weights_only=True)['updates'] == a['updates']

@pytest.mark.parametrize('damage', ['truncated', pytest.param('zeroed', marks=pytest.mark.slow)])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    cfg_path = write_config(tmp_path / 'train.yml', tiny_config(total_updates=20, updates_per_epoch=10,
                                                                checkpoint=dict(every_updates=5)))
    assert run_cli(cfg_path, cwd=tmp_path).returncode == 0
    latest = tmp_path / 'latest.pt'
    assert torch.load(tmp_path / 'previous.pt', weights_only=True)['updates'] == 15
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2] if damage == 'truncated' else b'\0' * len(data))
    r = run_cli(cfg_path, 'total_updates=30', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f'checkpoint {latest} is damaged and is skipped' in r.stdout
    assert 'previous.pt at update 15/30' in r.stdout
    assert torch.load(latest, weights_only=True)['updates'] == 30

def test_all_checkpoints_damaged_is_an_error_not_a_silent_restart(tmp_path):
    cfg_path = write_config(tmp_path / 'train.yml', tiny_config(total_updates=10, updates_per_epoch=10))
    assert run_cli(cfg_path, cwd=tmp_path).returncode == 0
    for p in tmp_path.glob('*.pt'): p.write_bytes(b'garbage')
    r = run_cli(cfg_path, cwd=tmp_path)
    assert r.returncode == 1 and 'every checkpoint in' in r.stderr and 'Traceback' not in r.stderr

EVIL = '''
import os, sys, torch
class Payload:
    def __reduce__(self): return (os.system, ('touch ' + sys.argv[2],))
state = torch.load(sys.argv[1], weights_only=True)
state['model'] = Payload()
torch.save(state, sys.argv[1])
'''

def test_a_pickled_payload_in_a_checkpoint_does_not_execute(tmp_path):
    cfg_path = write_config(tmp_path / 'train.yml', tiny_config(total_updates=10, updates_per_epoch=5))
    assert run_cli(cfg_path, cwd=tmp_path).returncode == 0
    pwned = tmp_path / 'pwned'
    subprocess.run([sys.executable, '-c', EVIL, str(tmp_path / 'latest.pt'), str(pwned)], check=True)
    assert not pwned.exists()
    r = run_cli(cfg_path, 'total_updates=20', cwd=tmp_path)
    assert not pwned.exists(), 'loading the checkpoint ran the payload'
    assert r.returncode == 0, r.stderr
    assert 'GLOBAL posix.system' in r.stdout and 'previous.pt' in r.stdout   # refused, and the run fell back

@pytest.mark.slow
def test_restart_false_fine_tunes_from_weights_with_a_fresh_schedule(tmp_path):
    stages = dict(first_stage=dict(name='LinearLR', start_factor=0.1, end_factor=1.0, num_updates=10),
                  second_stage=dict(name='CosineAnnealingLR', num_updates=-1))
    pre = write_config(tmp_path / 'pre' / 'train.yml', tiny_config(total_updates=40, updates_per_epoch=20, lr_scheduler=stages))
    assert run_cli(pre, cwd=tmp_path).returncode == 0
    pre_state = torch.load(tmp_path / 'pre' / 'latest.pt', weights_only=True)
    ft_cfg = tiny_config(total_updates=20, updates_per_epoch=10, log_every=1, lr_scheduler=stages,
                         optimizer=dict(name='AdamW', learning_rate=1e-3),
                         checkpoint=dict(path=str(tmp_path / 'pre'), checkpoint_name='latest', restart=False))
    r = run_cli(write_config(tmp_path / 'ft' / 'train.yml', ft_cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'loaded weights from' in r.stdout and 'restart: false' in r.stdout
    rows = read_rows(tmp_path / 'ft')
    assert rows[0]['update'] == 1 and abs(rows[0]['lr'] - 1e-4) < 1e-12     # the warmup starts again: 0.1 x 1e-3
    scratch = run_cli(write_config(tmp_path / 'scratch' / 'train.yml', {**ft_cfg, 'checkpoint': {}}), cwd=tmp_path)
    assert scratch.returncode == 0
    assert rows[0]['train_loss'] < read_rows(tmp_path / 'scratch')[0]['train_loss'] / 5   # it starts from trained weights
    ft = torch.load(tmp_path / 'ft' / 'latest.pt', weights_only=True)
    assert ft['updates'] == 20 and len(ft['optimizer']['state']) == len(pre_state['optimizer']['state'])
    # a rerun of the fine-tuning continues its own run, it does not reload the pretrained weights
    r2 = run_cli(tmp_path / 'ft' / 'train.yml', 'total_updates=25', cwd=tmp_path)
    assert r2.returncode == 0 and 'resumed from' in r2.stdout and 'at update 20/25' in r2.stdout

@pytest.mark.slow
def test_second_run_in_the_same_run_dir_is_refused(tmp_path):
    cfg_path = write_config(tmp_path / 'train.yml', tiny_config(total_updates=100000, updates_per_epoch=1000))
    first = Run(cfg_path, tmp_path, {**os.environ})
    try:
        assert first.started.wait(120)
        r = run_cli(cfg_path, cwd=tmp_path)
        assert r.returncode == 4, (r.returncode, r.stderr)
        assert f'in use by another run (pid {first.p.pid}' in r.stderr and 'Traceback' not in r.stderr
    finally:
        first.kill()
    r = run_cli(cfg_path, 'total_updates=5', cwd=tmp_path)     # the killed holder does not keep the lock
    assert r.returncode == 0, r.stderr
