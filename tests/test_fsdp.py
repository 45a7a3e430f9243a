"""FSDP2 with real torchrun processes on CPU (gloo): the same weights as DDP, the memory line, and activation
checkpointing (bitwise-equal gradients, fewer saved activations). The script under torchrun saves each rank's local
shards itself, to compare the weights without the sharded checkpoints (tests/test_fsdp_checkpoint.py has those)."""
import os, sys, textwrap
from pathlib import Path
import pytest, torch
from conftest import tiny_config, write_config, read_rows
from test_distributed import torchrun

# each rank: train from the config, then save its local shard of every parameter (dim 0: FSDP2 shards rows)
SCRIPT = textwrap.dedent('''
    import os, sys, torch
    from ml_suite.train import train
    t = train(sys.argv[1])
    rank = int(os.environ.get('RANK', 0))
    local = {k: (v.to_local() if hasattr(v, 'to_local') else v).detach().clone()
             for k, v in t.raw_model.state_dict().items()}
    torch.save(local, os.path.join(os.path.dirname(sys.argv[1]), f'weights{rank}.pt'))
''')

def full_weights(run_dir, n):
    parts = [torch.load(Path(run_dir) / f'weights{r}.pt', weights_only=True) for r in range(n)]
    return {k: torch.cat([p[k] for p in parts]) if n > 1 and parts[0][k].ndim else parts[0][k] for k in parts[0]}

def run2(tmp_path, name, cfg):
    path = write_config(tmp_path / name / 'train.yml', cfg)
    script = tmp_path / 'run.py'
    script.write_text(SCRIPT)
    r = torchrun('--standalone', '--nproc_per_node=2', script, path, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return (tmp_path / name / 'training.log').read_text()

@pytest.mark.slow
def test_fsdp_two_processes_equal_ddp_two_processes(tmp_path):
    # SGD, as in test_distributed: the conv biases before GroupNorm get gradients of rounding noise only, which Adam
    # would scale up to full steps (1e-3 apart after 30 updates); SGD keeps them where the summation order puts them
    base = tiny_config(total_updates=30, updates_per_epoch=30, log_every=10, grad_accum_steps=2, max_grad_norm=0.5,
                       optimizer=dict(name='SGD', learning_rate=0.05, momentum=0.9))
    log_d = run2(tmp_path, 'ddp', base)
    log_f = run2(tmp_path, 'fsdp', {**base, 'strategy': 'fsdp', 'fsdp': {'wrap': ['ConvBlock']}})
    a = full_weights(tmp_path / 'ddp', 1)
    b = full_weights(tmp_path / 'fsdp', 2)
    assert a.keys() == b.keys()
    # same samples and order; only the summation order of the reductions differs (fp32, clipping, accumulation)
    for k in a: torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)
    assert (tmp_path / 'fsdp' / 'latest' / 'COMMITTED').is_file()
    # the rows' gradient norm (a DTensor under FSDP) is the same number
    gd = [r['grad_norm'] for r in read_rows(tmp_path / 'ddp') if 'grad_norm' in r]
    gf = [r['grad_norm'] for r in read_rows(tmp_path / 'fsdp') if 'grad_norm' in r]
    assert len(gd) == 3 and gf == pytest.approx(gd, rel=1e-5)
    mem = lambda log: float(log.split('memory per process: ')[1].split(' MB')[0].replace(',', ''))
    assert '(fsdp, 2 shards)' in log_f and '(ddp, a full copy each)' in log_d
    # each rank holds half of the parameters, gradients and momenta (up to uneven rows)
    assert 0.45 < mem(log_f) / mem(log_d) < 0.6, (mem(log_f), mem(log_d))

def test_an_unknown_wrap_class_names_the_models_classes(tmp_path):
    from ml_suite.core import ConfigError
    from ml_suite.trainer import modules_named
    from ml_suite.models import UNet
    with pytest.raises(ConfigError, match='its module classes are: .*ConvBlock'):
        modules_named(UNet(1, 1, 4, 1), ['Block'], 'fsdp.wrap')

def saved_bytes(model, x):
    "Bytes of the tensors autograd keeps for backward during a forward of `model` on `x`, and the gradients."
    total = [0]
    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).square().mean()
    loss.backward()
    return total[0], [p.grad.clone() for p in model.parameters()]

def test_activation_checkpointing_keeps_gradients_and_saves_less():
    import copy
    from ml_suite.models import UNet
    from ml_suite.trainer import wrap_model
    torch.manual_seed(0)
    plain = UNet(1, 1, 8, 2)
    ckpt = copy.deepcopy(plain)
    wrap_model(ckpt, torch.device('cpu'), activation_checkpoint=['ConvBlock'])
    x = torch.randn(4, 1, 32, 32)
    n_plain, g_plain = saved_bytes(plain, x)
    n_ckpt, g_ckpt = saved_bytes(ckpt, x)
    for a, b in zip(g_plain, g_ckpt): assert torch.equal(a, b)
    assert n_ckpt < n_plain / 2, (n_ckpt, n_plain)

def test_one_process_fsdp_trains_as_one_process(tmp_path):
    from ml_suite.train import train
    base = tiny_config(total_updates=6, updates_per_epoch=6, log_every=3)
    a = train({**base, 'run_dir': str(tmp_path / 'plain')})
    b = train({**base, 'run_dir': str(tmp_path / 'fsdp'), 'strategy': 'fsdp', 'activation_checkpoint': ['ConvBlock']})
    assert not b.sharded and '(one process)' in b.memory_line()
    for (k, v), w in zip(a.raw_model.state_dict().items(), b.raw_model.state_dict().values()): assert torch.equal(v, w), k
    # the checkpoints of strategy fsdp, in one process too: a later run may resume them with several
    assert (tmp_path / 'fsdp' / 'latest' / 'COMMITTED').is_file() and not (tmp_path / 'fsdp' / 'latest.pt').exists()

def test_an_unknown_activation_checkpoint_class_is_a_config_error(tmp_path):
    from ml_suite.core import ConfigError
    from ml_suite.train import train
    cfg = {**tiny_config(total_updates=2), 'run_dir': str(tmp_path), 'activation_checkpoint': ['Block']}
    with pytest.raises(ConfigError, match="activation_checkpoint names Block, but the model \\(UNet\\)"): train(cfg)

@pytest.mark.slow
def test_fsdp_with_compile_compiles_each_block(tmp_path):
    base = tiny_config(total_updates=6, updates_per_epoch=6, log_every=3, compile=True,
                       optimizer=dict(name='SGD', learning_rate=0.05, momentum=0.9))
    log = run2(tmp_path, 'fsdp', {**base, 'strategy': 'fsdp', 'fsdp': {'wrap': ['ConvBlock']}})
    assert 'update 6/6' in log and '(fsdp, 2 shards)' in log
    # each ConvBlock was compiled in its place (then sharded); the root was not
    names = torch.load(tmp_path / 'fsdp' / 'weights0.pt', weights_only=True)
    assert 'stem._orig_mod.0.weight' in names and not any(k.startswith('_orig_mod') for k in names)

@pytest.mark.slow
def test_fsdp_nonfinite_guard_stops_every_rank(tmp_path):
    # a learning rate that makes the loss NaN within a few updates: both ranks skip, then stop together (exit 5)
    cfg = tiny_config(total_updates=30, strategy='fsdp', max_grad_norm=None, nonfinite={'max_consecutive': 3},
                      optimizer=dict(name='SGD', learning_rate=1e12))
    path = write_config(tmp_path / 'nan' / 'train.yml', cfg)
    r = torchrun('--standalone', '--nproc_per_node=2', '-m', 'ml_suite.train', path, cwd=tmp_path)
    log = (tmp_path / 'nan' / 'training.log').read_text()
    # torchrun exits 1 when a worker fails; each worker's own code is in its summary
    assert r.returncode == 1 and (r.stdout + r.stderr).count('exitcode  : 5') == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert 'non-finite loss or gradient' in log and '(fsdp, 2 shards)' in log

@pytest.mark.slow
def test_fsdp_param_dtype_bfloat16_trains(tmp_path):
    # FSDP2's mixed precision: bf16 forward and backward, fp32 reduction and fp32 sharded weights
    cfg = tiny_config(total_updates=10, updates_per_epoch=10, log_every=5, strategy='fsdp',
                      fsdp={'param_dtype': 'bfloat16'})
    log = run2(tmp_path, 'bf16', cfg)
    losses = [r['train_loss'] for r in read_rows(tmp_path / 'bf16') if 'train_loss' in r]
    assert len(losses) == 2 and losses[1] < losses[0], losses
    w = torch.load(tmp_path / 'bf16' / 'weights0.pt', weights_only=True)
    assert all(v.dtype == torch.float32 for v in w.values()) and '(fsdp, 2 shards)' in log
