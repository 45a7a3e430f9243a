"""Smoke tests of benchmarks/: each benchmark starts and produces its table at a tiny size (seconds, not minutes).

The numbers themselves are not checked here (the machine is shared and noisy); what is checked could fail: the
scripts run, the ml_suite Trainer ends with the plain loop's weights bit for bit, a background checkpoint is durable
and named when `Trainer.save` has been waited for, and a dry run does not load the compiler.
"""
import json, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / 'benchmarks'


# every benchmark script's check runs subprocesses of a few seconds each: with the slow tests (CI runs them too),
# so that the default run stays within its budget
pytestmark = pytest.mark.slow

def run(*args, timeout=300):
    out = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_overhead_runs_and_ml_suite_matches_the_plain_loop_bitwise(tmp_path):
    out = run(BENCH / 'overhead.py', '--rounds=1', '--updates=30', '--warmup=5', '--block=10', '--in-features=16',
              '--hidden=16', '--contenders=ml_suite', f'--json={tmp_path / "r.json"}')
    assert '| ml_suite |' in out
    res = json.loads((tmp_path / 'r.json').read_text())['contenders']['ml_suite']
    assert res['weights_equal_plain'] is True
    assert res['median_ratio'] > 0


def test_overhead_through_the_cli_ends_with_the_plain_loops_weights(tmp_path):
    "ml-suite-train with a model and dataset by import path, against plain_loop.py: both runs end bit for bit equal."
    out = run(BENCH / 'overhead.py', '--contenders=ml-suite-train', '--rounds=1', '--cli-updates=3,9', '--cli-width=16',
              '--cli-samples=128', '--log-every=2', '--cli-repeats=2', f'--json={tmp_path / "r.json"}')
    assert '| ml-suite-train |' in out
    res = json.loads((tmp_path / 'r.json').read_text())['cli']
    assert res['weights_equal_plain'] is True and res['updates'] == [3, 9]
    assert {'wall_ratio', 'cpu_ratio', 'wall_min_ratio', 'cpu_ratio_range'} <= set(res)   # at this size the slopes are noise


def test_overhead_through_the_cli_with_an_ema_ends_with_the_plain_loops_model_and_average(tmp_path):
    "--mode ema on the command line: callbacks: [{name: ema}] against plain_loop.py --ema-decay, eval_model compared."
    out = run(BENCH / 'overhead.py', '--mode=ema', '--ema-decay=0.9', '--contenders=ml-suite-train', '--rounds=1',
              '--cli-updates=3,9', '--cli-width=16', '--cli-samples=128', '--log-every=2', '--cli-repeats=1',
              f'--json={tmp_path / "r.json"}')
    assert '| ml-suite-train |' in out and 'weights and EMA == plain' in out
    assert json.loads((tmp_path / 'r.json').read_text())['cli']['weights_equal_plain'] is True


@pytest.mark.parametrize('mode', ['val', 'ckpt'])
def test_overhead_with_validation_and_checkpoints(mode):
    out = run(BENCH / 'overhead.py', '--contender=ml_suite', f'--mode={mode}', '--every=10', '--updates=30', '--warmup=5',
              '--block=10', '--in-features=16', '--hidden=16')
    res = json.loads(out.strip().splitlines()[-1])
    assert res['weights_equal_plain'] is True and res['blocks'] >= 2


def test_overhead_with_an_ema_keeps_the_plain_loops_model_and_average():
    "--mode ema: the Trainer's ema callback against AveragedModel by hand; model and average equal bit for bit."
    out = run(BENCH / 'overhead.py', '--contender=ml_suite', '--mode=ema', '--ema-decay=0.9', '--updates=30',
              '--warmup=5', '--block=10', '--in-features=16', '--hidden=16')
    res = json.loads(out.strip().splitlines()[-1])
    assert res['weights_equal_plain'] is True and res['ema_equal_plain'] is True and res['blocks'] >= 2
    assert res['ema_sha256'] != res['weights_sha256']


def test_checkpoint_benchmark_runs(tmp_path):
    out = run(BENCH / 'checkpoint.py', '--mb=2', '--rounds=1', f'--dir={tmp_path}', f'--json={tmp_path / "r.json"}')
    assert 'stall: Trainer.save / torch.save' in out
    res = json.loads((tmp_path / 'r.json').read_text())
    assert 1 < res['state_mb'] < 4
    assert list(tmp_path.iterdir()) == [tmp_path / 'r.json']   # nothing left behind


def test_fsdp_rows_of_the_checkpoint_and_gpu_benchmarks_run_on_cpu(tmp_path):
    "checkpoint.py --fsdp and gpu.py --fsdp with two torchrun processes (gloo): their tables, nothing left behind."
    out = run(BENCH / 'checkpoint.py', '--fsdp', '--mb=2', '--rounds=1', f'--dir={tmp_path}', f'--json={tmp_path / "r.json"}')
    assert '| sharded save / (gather + save on rank 0) |' in out
    res = json.loads((tmp_path / 'r.json').read_text())
    assert res['procs'] == 2 and res['local_mb'] < res['full_mb']
    assert list(tmp_path.iterdir()) == [tmp_path / 'r.json']
    out = run(BENCH / 'gpu.py', '--fsdp', '--device=cpu', '--procs=2', '--size=16', '--width=4', '--depth=1', '--batch=2',
              '--steps=1', '--warmup=1')
    assert '| ddp |' in out and '| fsdp (sharded) |' in out


def test_gpu_script_runs_on_cpu_at_a_tiny_size(tmp_path):
    out = run(BENCH / 'gpu.py', '--device=cpu', '--size=16', '--width=4', '--depth=1', '--batch=2', '--steps=1',
              '--warmup=1', '--no-compile', '--matmul-n=64', f'--json={tmp_path / "r.json"}')
    assert '| bf16 autocast |' in out
    res = json.loads((tmp_path / 'r.json').read_text())
    assert res['step_flops'] > 0 and all(r['mfu'] > 0 for r in res['rows'])


def test_startup_benchmark_runs_and_dry_run_skips_the_compiler(tmp_path):
    out = run(BENCH / 'startup.py', '--rounds=1', '--limit-runs=0')
    assert 'dry run' in out and 'import torch' in out
    code = ("import sys; from ml_suite.train import dry_run\n"
            f"dry_run({str(ROOT / 'configs' / 'quickstart.yml')!r}, ['run_dir={tmp_path}'], out=lambda s: None)\n"
            "print(sorted(m for m in ('torch._dynamo', 'torch._inductor', 'sympy', 'wandb', 'matplotlib') if m in sys.modules))")
    assert run('-c', code).strip() == '[]'


def test_a_time_limited_run_stops_in_time_with_a_checkpoint(tmp_path):
    run(BENCH / 'startup.py', '--rounds=0', '--limit=30', '--limit-runs=1', f'--json={tmp_path / "r.json"}', timeout=120)
    res = json.loads((tmp_path / 'r.json').read_text())['time_limit']
    assert res['all_stopped_with_checkpoint'], res
    assert res['worst_wall_fraction'] <= 1.0, res
    assert all(0 < r['startup_s'] < r['wall_s'] for r in res['runs']), res   # from starts.jsonl
