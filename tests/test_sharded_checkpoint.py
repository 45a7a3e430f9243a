"""Sharded checkpoints (torch.distributed.checkpoint) with real torchrun processes on CPU (gloo): bitwise save and load
of an FSDP2 model and its AdamW state, a 2-process checkpoint loaded by one process, a truncated shard that falls back
to previous/, and a SIGKILL of the whole torchrun in the middle of a save that leaves latest/ intact."""
import os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch

# the trainer-level tests (tests/test_fsdp_checkpoint.py) run by default; these lower-level ones with the slow tests
pytestmark = pytest.mark.slow
from ml_suite.checkpoint import ShardedCheckpointer, load_sharded, load_sharded_full, CheckpointDamaged

SCRIPT = r'''
import os, sys, time
import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict, StateDictOptions
from ml_suite.checkpoint import ShardedCheckpointer

def build(seed, width):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, 4))
    if dist.is_initialized():
        for m in net: fully_shard(m) if isinstance(m, torch.nn.Linear) else None
        fully_shard(net)
    return net, torch.optim.AdamW(net.parameters(), lr=1e-2)

def step(net, opt, i):
    torch.manual_seed(100 + i)
    net(torch.randn(16, 8)).square().mean().backward(); opt.step(); opt.zero_grad()

def full(net, opt):
    return get_state_dict(net, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

if __name__ == '__main__':
    mode, run, width = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if 'RANK' in os.environ: dist.init_process_group('gloo')
    rank = dist.get_rank() if dist.is_initialized() else 0
    ck = ShardedCheckpointer(run, keep_last=2)
    if mode == 'save':
        net, opt = build(0, width)
        for i in range(3):
            step(net, opt, i)
            msd, osd = get_state_dict(net, opt)
            ck.save({'model': msd, 'optim': osd, 'extra': {'updates': i + 1}}, epoch=i + 1, background=i == 2)
        print(f'stall {ck.stall:.3f} s, durable after {ck.wait():.3f} s', flush=True)
        ref = full(net, opt)
        if rank == 0: torch.save({'model': ref[0], 'optim': ref[1]}, os.path.join(run, 'ref.pt'))
    elif mode == 'load':
        net, opt = build(1, width)
        msd, osd = get_state_dict(net, opt)
        tgt = {'model': msd, 'optim': osd}
        path, extra = ck.load_newest_good(tgt)
        set_state_dict(net, opt, model_state_dict=tgt['model'], optim_state_dict=tgt['optim'])
        got = full(net, opt)
        if rank == 0: torch.save({'model': got[0], 'optim': got[1]}, os.path.join(run, f'got_{os.environ.get("WORLD_SIZE", 1)}.pt'))
        print(f"loaded {os.path.basename(path)} {extra['updates']}", flush=True)   # one write: ranks share stdout
    elif mode == 'loop':
        net, opt = build(0, width)
        for i in range(10**6):
            step(net, opt, i)
            msd, osd = get_state_dict(net, opt)
            ck.save({'model': msd, 'optim': osd, 'extra': {'updates': i + 1}}, background=sys.argv[4] == 'async')
    if dist.is_initialized(): dist.destroy_process_group()
    # end as ml-suite-train does: torch 2.15's gloo workers may still release a finished collective's tensors (here the
    # default group's, which FSDP keeps) during the interpreter's teardown, and that aborts the process
    from ml_suite.train import quick_exit
    quick_exit(0)
'''

def torchrun(tmp_path, *args, timeout=120):
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        str(tmp_path / 'script.py'), *map(str, args)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r

def one_process(tmp_path, *args, timeout=120):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, str(tmp_path / 'script.py'), *map(str, args)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r

def assert_bitwise(a, b):
    if isinstance(a, dict):
        assert sorted(map(str, a)) == sorted(map(str, b))
        for k in a: assert_bitwise(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b): assert_bitwise(x, y)
    elif isinstance(a, torch.Tensor): assert torch.equal(a, b) and a.dtype == b.dtype, (a, b)
    else: assert a == b

@pytest.fixture
def saved(tmp_path):
    "A run directory with three sharded checkpoints of a 2-process FSDP run (the last one async) and its full state."
    (tmp_path / 'script.py').write_text(SCRIPT)
    run = tmp_path / 'run'; run.mkdir()
    r = torchrun(tmp_path, 'save', run, 64)
    assert 'stall' in r.stdout
    return tmp_path, run

def test_one_process_save_and_load_are_bitwise_and_two_processes_load_it(tmp_path):
    (tmp_path / 'script.py').write_text(SCRIPT)
    run = tmp_path / 'run'; run.mkdir()
    one_process(tmp_path, 'save', run, 32)
    r = one_process(tmp_path, 'load', run, 32)
    assert 'loaded latest 3' in r.stdout
    ref = torch.load(run / 'ref.pt', weights_only=True)
    assert_bitwise(ref, torch.load(run / 'got_1.pt', weights_only=True))
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ['epoch_2', 'epoch_3', 'latest', 'previous']
    assert not list(run.glob('.*'))
    # 1 -> 2: the one-process checkpoint into two FSDP processes (DCP shards it)
    r = torchrun(tmp_path, 'load', run, 32)
    assert r.stdout.count('loaded latest 3') == 2
    assert_bitwise(ref, torch.load(run / 'got_2.pt', weights_only=True))

def test_two_processes_save_and_load_bitwise_and_one_process_loads_the_same(saved):
    tmp_path, run = saved
    assert sorted(p.name for p in (run / 'latest').iterdir()) == ['.metadata', 'COMMITTED', '__0_0.distcp',
                                                                  '__1_0.distcp', 'extra.pt']
    r = torchrun(tmp_path, 'load', run, 64)
    assert r.stdout.count('loaded latest 3') == 2
    ref = torch.load(run / 'ref.pt', weights_only=True)
    assert_bitwise(ref, torch.load(run / 'got_2.pt', weights_only=True))
    # 2 -> 1: the same checkpoint into one process without a process group (DCP reshards)
    r = one_process(tmp_path, 'load', run, 64)
    assert 'loaded latest 3' in r.stdout
    assert_bitwise(ref, torch.load(run / 'got_1.pt', weights_only=True))
    plain = load_sharded_full(run / 'latest')
    assert_bitwise(ref['model'], plain['model'])
    assert plain['extra'] == {'updates': 3}

def test_a_truncated_shard_falls_back_to_previous_with_a_warning_naming_it(saved):
    tmp_path, run = saved
    shard = run / 'latest' / '__1_0.distcp'
    shard.write_bytes(shard.read_bytes()[:-10])
    r = torchrun(tmp_path, 'load', run, 64)
    assert r.stdout.count('loaded previous 2') == 2, r.stdout
    assert f'checkpoint {run / "latest"} is damaged and is skipped' in r.stderr
    assert '__1_0.distcp is' in r.stderr and 'truncated' in r.stderr
    ck = ShardedCheckpointer(run)
    with pytest.warns(UserWarning, match='__1_0.distcp'):
        net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
        path, extra = ck.load_newest_good({'model': net.state_dict()})
    assert (path.name, extra['updates']) == ('previous', 2)

@pytest.mark.parametrize('how', ['sync', 'async'])
def test_a_sigkill_during_a_save_leaves_latest_intact(tmp_path, how):
    (tmp_path / 'script.py').write_text(SCRIPT)
    run = tmp_path / 'run'; run.mkdir()
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    # a wide model: each save writes about 50 MB, so a kill while a temporary directory exists is easy to hit
    p = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                          str(tmp_path / 'script.py'), 'loop', str(run), '500000', how], cwd=tmp_path, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        t0 = time.monotonic()
        while not ((run / 'latest').is_dir() and list(run.glob('.latest.*.tmp/__*'))):
            assert time.monotonic() - t0 < 60 and p.poll() is None, 'no save in flight within 60 s'
            time.sleep(0.005)
        os.killpg(p.pid, signal.SIGKILL)    # the whole torchrun: agent and both workers
    finally:
        p.wait()
    assert list(run.glob('.latest.*.tmp')), 'the kill landed inside a save'
    ck = ShardedCheckpointer(run)
    ck.remove_stale()
    assert not list(run.glob('.*.tmp'))
    plain = load_sharded_full(run / 'latest')    # complete: it verifies and loads
    assert plain['extra']['updates'] >= 1 and plain['model']['0.weight'].shape == (500_000, 8)

EXIT_SCRIPT = r'''
import atexit, os, sys, torch, torch.distributed as dist
from ml_suite.checkpoint import ShardedCheckpointer

def gloo_threads():
    tids = os.listdir('/proc/self/task')
    return {t for t in tids if open(f'/proc/self/task/{t}/comm').read().strip() == 'pt_gloo_runloop'}

def say(msg): sys.stdout.write(msg + '\n'); sys.stdout.flush()   # one write: ranks share stdout

dist.init_process_group('gloo')
before = set(os.listdir('/proc/self/task'))   # every thread of the default group (some not yet named)
# registered before the checkpointer's own handler, so it runs after it: what is left for the interpreter's teardown
atexit.register(lambda: say(f'own threads left at exit {len(own & gloo_threads())}'))
ck = ShardedCheckpointer(sys.argv[1])
ck.save({'w': torch.full((4,), float(dist.get_rank())), 'extra': {'updates': 1}})
own = gloo_threads() - before
say(f'own threads {len(own)}')
if sys.argv[2] == 'close':
    ck.close()
    say(f'own threads left after close {len(own & gloo_threads())}')
dist.destroy_process_group()
'''

@pytest.mark.skipif(not Path('/proc/self/task').is_dir(), reason='counts threads in /proc')
@pytest.mark.parametrize('how', ['close', 'exit'])
def test_the_checkpointers_gloo_group_is_gone_before_the_interpreters_teardown(tmp_path, how):
    # a gloo worker thread still alive in the teardown aborts the process when it ends a collective there
    # (`terminate called without an active exception`): a script that exits right after a save
    (tmp_path / 'script.py').write_text(EXIT_SCRIPT)
    run = tmp_path / 'run'; run.mkdir()
    r = torchrun(tmp_path, run, how)
    assert r.stdout.count('own threads 2') == 2, r.stdout
    if how == 'close': assert r.stdout.count('own threads left after close 0') == 2, r.stdout
    assert r.stdout.count('own threads left at exit 0') == 2, r.stdout
    assert load_sharded_full(run / 'latest')['extra'] == {'updates': 1}
