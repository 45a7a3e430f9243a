"""DDP with real torchrun processes on CPU (gloo): one writer, the same model as one process with the doubled batch,
two 'nodes' on one rendezvous, a failing rank that takes the job down quickly, kill and resume, and a world-size change."""
import os, signal, socket, subprocess, sys, time
from pathlib import Path
import pytest, torch
from conftest import tiny_config, write_config, run_cli, read_rows

def torchrun(*args, cwd, env=None, timeout=300, **kw):
    e = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1', **(env or {})}
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', *map(str, args)], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout, **kw)

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def weights(path):
    return torch.load(path, weights_only=True)['model']

def test_two_processes_equal_one_process_with_the_doubled_batch(tmp_path):
    base = tiny_config(total_updates=30, updates_per_epoch=15, optimizer=dict(name='SGD', learning_rate=0.05, momentum=0.9))
    two = write_config(tmp_path / 'two' / 'train.yml', {**base, 'batch_size': 8})
    r = torchrun('--standalone', '--nproc_per_node=2', '-m', 'ml_suite.train', two, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    one = write_config(tmp_path / 'one' / 'train.yml', {**base, 'batch_size': 16})
    r1 = run_cli(one, cwd=tmp_path, env={'OMP_NUM_THREADS': '1'})
    assert r1.returncode == 0, r1.stderr
    log = (tmp_path / 'two' / 'training.log').read_text()
    assert 'effective batch 8 x 2 x 1 = 16' in log
    info = [l for l in log.splitlines() if ' INFO ' in l]
    assert info and all('[rank 0]' in l for l in info), 'one writer: every INFO line comes from rank 0'
    a, b = weights(tmp_path / 'two' / 'latest.pt'), weights(tmp_path / 'one' / 'latest.pt')
    # Same samples in the same order; only the summation order of the gradient differs (all-reduce vs one batch).
    # Tolerance: 1e-5 absolute on every weight after 30 SGD updates (float32).
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)
    va = [row['val_loss'] for row in read_rows(tmp_path / 'two') if 'val_loss' in row]
    vb = [row['val_loss'] for row in read_rows(tmp_path / 'one') if 'val_loss' in row]
    assert va == pytest.approx(vb, rel=1e-4), 'validation reduced over ranks equals one process'

@pytest.mark.slow
def test_two_nodes_on_one_rendezvous(tmp_path):
    cfg = write_config(tmp_path / 'train.yml', tiny_config(total_updates=20, updates_per_epoch=10))
    port = free_port()
    common = ['--nnodes=2', '--nproc_per_node=1', '--rdzv_backend=c10d', f'--rdzv_endpoint=127.0.0.1:{port}',
              '--rdzv_id=test-job', '-m', 'ml_suite.train', str(cfg)]
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    nodes = [subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', f'--node_rank={i}', *common], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    outs = [n.communicate(timeout=300)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs
    assert '2 process(es)' in (tmp_path / 'training.log').read_text()
    assert torch.load(tmp_path / 'latest.pt', weights_only=True)['updates'] == 20

FAILING = '''
import os
from ml_suite.models import UNet

class FailingUNet(UNet):
    "Raises in the forward pass of training update FAIL_AT on rank 1 only."
    calls = 0
    def forward(self, x):
        if self.training:
            FailingUNet.calls += 1
            if os.environ.get('RANK') == '1' and FailingUNet.calls == int(os.environ['FAIL_AT']):
                raise RuntimeError(f'injected failure at forward {FailingUNet.calls}')
        return super().forward(x)
'''

def test_a_failing_rank_stops_every_rank_quickly_with_its_error_in_the_log(tmp_path):
    (tmp_path / 'failing.py').write_text(FAILING)
    cfg = tiny_config(model=dict(type='failing:FailingUNet', width=4, depth=1), total_updates=1000, updates_per_epoch=500)
    path = write_config(tmp_path / 'train.yml', cfg)
    t0 = time.monotonic()
    r = torchrun('--standalone', '--nproc_per_node=2', '-m', 'ml_suite.train', path, cwd=tmp_path,
                 env={'FAIL_AT': '12', 'PYTHONPATH': str(tmp_path)}, timeout=240)
    elapsed = time.monotonic() - t0
    assert r.returncode != 0
    assert elapsed < 90, f'the job took {elapsed:.0f} s to go down'          # not the collective timeout
    log = (tmp_path / 'training.log').read_text()
    assert '[rank 1] ERROR training failed on rank 1 at update 11: RuntimeError: injected failure at forward 12' in log, log
    out = r.stdout + r.stderr
    assert 'injected failure' in out
    time.sleep(1)
    assert not subprocess.run(['pgrep', '-f', str(path)], capture_output=True).stdout, 'no worker outlives the job'

@pytest.mark.slow
def test_kill_and_resume_under_two_processes_is_bitwise_exact(tmp_path):
    cfg = tiny_config(total_updates=120, updates_per_epoch=20, checkpoint=dict(every_updates=5))
    ref = write_config(tmp_path / 'ref' / 'train.yml', cfg)
    assert torchrun('--standalone', '--nproc_per_node=2', '-m', 'ml_suite.train', ref, cwd=tmp_path).returncode == 0
    path = write_config(tmp_path / 'killed' / 'train.yml', cfg)
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '-m', 'ml_suite.train', str(path)]
    kills = 0
    for attempt in range(10):
        p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        latest = tmp_path / 'killed' / 'latest.pt'
        before = latest.stat().st_mtime_ns if latest.exists() else 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:   # kill soon after this run wrote a checkpoint
            if latest.exists() and latest.stat().st_mtime_ns != before: break
            time.sleep(0.01)
        if p.poll() is None and kills < 3:
            time.sleep(0.3)
            os.killpg(p.pid, signal.SIGKILL); p.wait(); kills += 1
            continue
        assert p.wait(300) == 0
        break
    assert kills == 3
    a, b = torch.load(tmp_path / 'ref' / 'latest.pt', weights_only=True), torch.load(latest, weights_only=True)
    assert a['updates'] == b['updates'] == 120
    for k in a['model']: assert torch.equal(a['model'][k], b['model'][k]), k

@pytest.mark.slow
def test_resume_with_another_world_size_warns_and_finishes(tmp_path):
    path = write_config(tmp_path / 'train.yml', tiny_config(total_updates=20, updates_per_epoch=10))
    assert run_cli(path, cwd=tmp_path).returncode == 0
    r = torchrun('--standalone', '--nproc_per_node=2', '-m', 'ml_suite.train', path, 'total_updates=30', cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    log = (tmp_path / 'training.log').read_text()
    assert log.count('resuming a 1-process checkpoint with 2 processes') == 1 and 'order of the remaining data differs' in log
    assert torch.load(tmp_path / 'latest.pt', weights_only=True)['updates'] == 30

@pytest.mark.slow
def test_gradient_accumulation_under_ddp_equals_the_full_batch(tmp_path):
    "2 processes x batch 4 x 2 micro-batches (all-reduce on the last one only) = 1 process x batch 16."
    base = tiny_config(total_updates=20, updates_per_epoch=20, optimizer=dict(name='SGD', learning_rate=0.05, momentum=0.9))
    acc = write_config(tmp_path / 'acc' / 'train.yml', {**base, 'batch_size': 4, 'grad_accum_steps': 2})
    r = torchrun('--standalone', '--nproc_per_node=2', '-m', 'ml_suite.train', acc, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'effective batch 4 x 2 x 2 = 16' in (tmp_path / 'acc' / 'training.log').read_text()
    one = write_config(tmp_path / 'one' / 'train.yml', {**base, 'batch_size': 16})
    assert run_cli(one, cwd=tmp_path, env={'OMP_NUM_THREADS': '1'}).returncode == 0
    a, b = weights(tmp_path / 'acc' / 'latest.pt'), weights(tmp_path / 'one' / 'latest.pt')
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)

RANKED = '''
import os, torch
from ml_suite.steps import model_loss, Count
from ml_suite.models import UNet

def ranked(model, batch):
    "The supervised loss, and the rank as an extra: a row's mean over the ranks of two processes is 0.5."
    x, y = batch
    loss = torch.nn.functional.mse_loss(model(x), y)
    rank = float(os.environ.get('RANK', 0))
    return loss, {'rank': torch.tensor(rank), 'samples_seen': Count(x.shape[0])}
'''

@pytest.mark.slow
def test_a_steps_extras_are_averaged_over_ranks_and_ema_with_early_stopping_run_under_ddp(tmp_path):
    "Two processes: train_rank is 0.5 in every row, counts add up over ranks, the EMA and early stopping run."
    (tmp_path / 'ranked.py').write_text(RANKED)
    cfg = tiny_config(total_updates=20, updates_per_epoch=10, log_every=5,
                      callbacks=[{'name': 'ema', 'decay': 0.9}, {'name': 'early_stopping', 'patience': 3}])
    cfg['model'] = {**cfg['model'], 'step': 'ranked:ranked'}
    del cfg['model']['criterion']
    path = write_config(tmp_path / 'run' / 'train.yml', cfg)
    r = torchrun('--standalone', '--nproc_per_node=2', '-m', 'ml_suite.train', path, cwd=tmp_path,
                 env={'PYTHONPATH': str(tmp_path)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = read_rows(tmp_path / 'run')
    assert [x['update'] for x in rows] == [5, 10, 15, 20] and all(x['train_rank'] == 0.5 for x in rows), rows
    # both ranks' samples: the count's rate equals samples_per_s
    assert all(x['samples_seen_per_s'] == pytest.approx(x['samples_per_s'], rel=1e-3) for x in rows), rows
    ck = torch.load(tmp_path / 'run' / 'latest.pt', weights_only=True)
    assert ck['callbacks']['0:EMA']['n_averaged'] == 20 and 'eval_model' in ck
