"""Sharded checkpoints of `strategy: fsdp` runs, with real torchrun processes on CPU (gloo): a resume with another
number of processes (2 -> 1, 1 -> 2) starts from exactly the saved weights, a truncated shard falls back to
previous/ with a warning naming it, and SIGKILLs of the whole torchrun at random moments (inside a save, an async
save and a validation) end, after reruns, bitwise where an uninterrupted run ends."""
import os, random, signal, subprocess, sys, threading, time
from pathlib import Path
import pytest, torch
from conftest import tiny_config, write_config, run_cli, read_rows
from test_distributed import torchrun
from ml_suite.checkpoint import load_sharded_full

def fsdp_config(**over):
    return tiny_config(**{'total_updates': 40, 'updates_per_epoch': 10, 'log_every': 10, 'strategy': 'fsdp',
                          'fsdp': {'wrap': ['ConvBlock']}, **over})

def train2(cfg_path, cwd, **kw):
    r = torchrun('--standalone', '--nproc_per_node=2', '-m', 'ml_suite.train', cfg_path, *kw.pop('args', ()), cwd=cwd,
                 **kw)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r

def train1(cfg_path, cwd, *args):
    r = run_cli(cfg_path, *args, cwd=cwd)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r

def assert_tree_equal(a, b, path=''):
    if isinstance(a, dict):
        assert sorted(map(str, a)) == sorted(map(str, b)), path
        for k in a: assert_tree_equal(a[k], b[k], f'{path}/{k}')
    elif torch.is_tensor(a): assert torch.equal(a, b), path
    else: assert a == b, path

PEEK = '''
import torch, torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_model_state_dict, StateDictOptions
from ml_suite.callbacks import Callback
class Peek(Callback):
    "Write the full weights the run starts its fit with (rank 0), to compare with the checkpoint's."
    def on_fit_start(self, trainer):
        sd = get_model_state_dict(trainer.raw_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if trainer.dist.is_main: torch.save(sd, trainer.run_dir / 'at_resume.pt')
'''

@pytest.mark.slow
def test_a_truncated_shard_falls_back_and_one_process_resumes_two_processes_checkpoint_exactly(tmp_path, monkeypatch):
    "2 processes write latest/ (update 30) and previous/ (20); a shard of latest/ is cut; 1 process resumes previous/."
    monkeypatch.setenv('PYTHONPATH', str(tmp_path))
    (tmp_path / 'peek.py').write_text(PEEK)
    run = tmp_path / 'run'
    train2(write_config(run / 'train.yml', fsdp_config(total_updates=30)), tmp_path)
    saved = load_sharded_full(run / 'previous')
    assert saved['extra']['updates'] == 20
    shard = run / 'latest' / '__1_0.distcp'
    shard.write_bytes(shard.read_bytes()[:100])
    # a callback writes the weights the resumed fit starts with
    train1(write_config(run / 'train.yml', fsdp_config(callbacks=[{'name': 'peek:Peek'}])), tmp_path)
    log = (run / 'training.log').read_text()
    assert f'checkpoint {run / "latest"} is damaged and is skipped' in log and '__1_0.distcp is 100 bytes' in log
    assert f'resumed from {run / "previous"} at update 20/40' in log
    assert 'resuming a 2-process checkpoint with 1 processes' in log and 'update 40/40' in log
    assert_tree_equal(saved['model'], torch.load(run / 'at_resume.pt', weights_only=True))
    assert load_sharded_full(run / 'latest')['extra']['world_size'] == 1

@pytest.mark.slow
def test_one_process_checkpoint_resumed_by_two_processes_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv('PYTHONPATH', str(tmp_path))
    (tmp_path / 'peek.py').write_text(PEEK)
    run = tmp_path / 'run'
    train1(write_config(run / 'train.yml', fsdp_config(total_updates=20)), tmp_path)
    saved = load_sharded_full(run / 'latest')
    train2(write_config(run / 'train.yml', fsdp_config(callbacks=[{'name': 'peek:Peek'}])), tmp_path)
    assert_tree_equal(saved['model'], torch.load(run / 'at_resume.pt', weights_only=True))
    log = (run / 'training.log').read_text()
    assert 'resuming a 1-process checkpoint with 2 processes' in log and 'update 40/40' in log
    assert sorted(p.name for p in (run / 'latest').glob('*.distcp')) == ['__0_0.distcp', '__1_0.distcp']

@pytest.mark.slow
def test_a_ddp_run_directory_is_refused_by_strategy_fsdp(tmp_path):
    run = tmp_path / 'run'
    train1(write_config(run / 'train.yml', tiny_config(total_updates=10, updates_per_epoch=10)), tmp_path)
    r = run_cli(write_config(run / 'train.yml', fsdp_config(total_updates=20)), cwd=tmp_path)
    assert r.returncode == 2
    assert 'strategy (' in r.stderr or 'strategy is fsdp' in r.stderr, r.stderr
    assert 'holds checkpoints of a strategy ddp (or one process) run (latest.pt)' in r.stderr

class Torchrun:
    "`torchrun` of 2 processes in its own session, so that a SIGKILL reaches the launcher and both ranks at once."
    def __init__(self, cfg_path, cwd, env):
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '-m',
               'ml_suite.train', str(cfg_path)]
        self.p = subprocess.Popen(cmd, cwd=cwd, env={**env, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
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
        # torchrun starts each rank in a session of its own: the launcher and every descendant, at once
        pids, todo = [], [self.p.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            kids = Path(f'/proc/{pid}/task/{pid}/children')
            todo += [int(c) for c in kids.read_text().split()] if kids.exists() else []
        for pid in pids:
            try: os.kill(pid, signal.SIGKILL)
            except ProcessLookupError: pass
        self.p.wait()

def kill_fsdp_config(async_save):
    from test_resume import MARKED
    return fsdp_config(dataset=dict(name='marked:MarkedHeat', size=16, modes=4, num_samples=256), total_updates=300,
                       updates_per_epoch=20, log_every=20, max_grad_norm=1.0, checkpoint={'every_updates': 5,
                                                                                          'async': async_save},
                       lr_scheduler=dict(first_stage=dict(name='LinearLR', start_factor=0.1, num_updates=20),
                                         second_stage=dict(name='CosineAnnealingLR', num_updates=-1)))

@pytest.mark.slow
@pytest.mark.parametrize('async_save', [False, True])
def test_sigkill_of_the_whole_torchrun_anywhere_then_rerun_is_bitwise_an_uninterrupted_run(tmp_path, async_save):
    from test_resume import MARKED
    (tmp_path / 'marked.py').write_text(MARKED)
    cfg = kill_fsdp_config(async_save)
    # the EMA's average, sharded as the model is, resumes bit for bit too
    if async_save: cfg['callbacks'] = [{'name': 'ema', 'decay': 0.95}]
    env = {**os.environ, 'PYTHONPATH': str(tmp_path)}
    train2(write_config(tmp_path / 'ref' / 'train.yml', cfg), tmp_path, env={'PYTHONPATH': str(tmp_path)})
    run_dir, marker = tmp_path / 'killed', tmp_path / 'validating'
    cfg_path = write_config(run_dir / 'train.yml', cfg)
    rng, kills, reached, modes = random.Random(int(async_save)), [], [], ['in_save', 'random', 'in_validation']
    for attempt in range(30):
        mode = modes[len(kills) % 3] if len(kills) < 6 else None
        marker.unlink(missing_ok=True)
        r = Torchrun(cfg_path, tmp_path, {**env, 'VAL_MARKER': str(marker)})
        r.started.wait(120)
        hit = False
        if mode == 'random': hit = r.wait_until(lambda: False, timeout=rng.uniform(0.5, 3)) or r.p.poll() is None
        elif mode == 'in_save': hit = r.wait_until(lambda: any(run_dir.glob('.latest.*.tmp')))
        elif mode == 'in_validation': hit = r.wait_until(marker.exists)
        if mode and hit and r.p.poll() is None:
            r.kill()
            kills.append(mode)
            # latest/ is always a whole checkpoint
            reached.append(load_sharded_full(run_dir / 'latest')['extra']['updates']
                           if (run_dir / 'latest').exists() else None)
            continue
        assert r.p.wait(300) == 0, ''.join(r.out)[-3000:]
        break
    assert len(kills) >= 5 and {'random', 'in_save', 'in_validation'} <= set(kills), (kills, reached)
    a, b = load_sharded_full(tmp_path / 'ref' / 'latest'), load_sharded_full(run_dir / 'latest')
    assert a['extra']['updates'] == b['extra']['updates'] == 300
    assert sorted(a) == sorted(b) == sorted(['model', 'optim', 'extra'] + ['callbacks', 'eval_model'] * async_save)
    for k in set(a) - {'extra'}: assert_tree_equal(a[k], b[k], k)
    assert a['extra'].get('callbacks') == b['extra'].get('callbacks')
    updates = [row['update'] for row in read_rows(run_dir)]
    assert updates == sorted(set(updates)), 'metrics.jsonl has each update once, in order'
    assert not list(run_dir.glob('.*.tmp')), 'no temporary directories left behind'

@pytest.mark.slow
def test_a_sharded_run_is_evaluated_exported_and_reported_in_one_process(tmp_path, monkeypatch):
    "eval, predict, export --format pt, load_model and status on a 2-process FSDP run (with an EMA), without a group."
    from ml_suite.inference import load_model, evaluate
    from ml_suite.train import run_status
    run = tmp_path / 'run'
    train2(write_config(run / 'train.yml', fsdp_config(total_updates=20, callbacks=[{'name': 'ema', 'decay': 0.9}])),
           tmp_path)
    full = load_sharded_full(run / 'best')
    for weights, key in (('eval', 'eval_model'), ('raw', 'model')):
        m = load_model(run, 'best', 'cpu', weights)
        assert_tree_equal(full[key], m.module.state_dict())
        assert m.weights == weights and m.updates == full['extra']['updates']
    # the best validation was run with the EMA's (sharded) weights: one process gets the same number from the files
    res = evaluate(run, 'val', 'best', device='cpu', write=False)
    best = min(r['val_loss'] for r in read_rows(run) if r.get('val_loss') is not None)
    assert res['metrics']['loss'] == pytest.approx(best, rel=1e-5), (res, best)
    r = subprocess.run([sys.executable, '-m', 'ml_suite.inference', 'export', str(run), '--format', 'pt', '--weights',
                        'raw'], capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr
    out = torch.load(run / 'exported' / 'best.pt', weights_only=True)
    assert out['weights'] == 'raw'
    assert_tree_equal(full['model'], out['model'])
    st = run_status(run)
    assert (st['resumes_from'], st['resume_update'], st['updates']) == ('latest/', 20, 20)
    # a damaged shard: a clear error naming the file, no traceback
    shard = run / 'best' / '__0_0.distcp'
    shard.write_bytes(shard.read_bytes()[:10])
    r = subprocess.run([sys.executable, '-m', 'ml_suite.inference', 'eval', str(run), '--device', 'cpu'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and '__0_0.distcp is 10 bytes' in r.stderr and 'Traceback' not in r.stderr, r.stderr
