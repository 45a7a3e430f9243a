"""What ml_suite's precision and compile settings buy on a GPU: the example UNet trained through `Trainer.train_step`.

One prepared script, meant to finish in under 8 minutes on one GPU:

- fp32 eager vs bf16 autocast vs bf16 + `torch.compile`: throughput (samples/s) and peak memory;
- bf16 + compile with `mem_budget` 1.0, 0.5 and 0.1 (activation recomputation): peak memory and throughput;
- an MFU estimate: FLOPs of one training step counted by `torch.utils.flop_counter` (forward and backward; the
  optimizer's elementwise work is not counted), times steps per second, over the card's bf16 matmul rate as measured
  here (a large bf16 matmul in a loop), not the datasheet's.

    uv run python benchmarks/gpu.py                      # on a GPU: 256x256 fields, batch chosen to fill the card
    uv run python benchmarks/gpu.py --device cpu --size 32 --width 8 --depth 2 --batch 4 --steps 3   # a tiny check

`--fsdp` (issue 19) runs the UNet under torchrun over every visible GPU (`--procs`, NCCL; gloo with `--device cpu`),
once with `strategy: ddp` and once with `strategy: fsdp` (FSDP2, each block a unit): per GPU the parameters +
gradients + optimizer state it holds (from tensor sizes, as the log's `memory per process` line), its peak memory
and the samples/s of all GPUs together. With one GPU FSDP has nothing to shard, and the table says so.

    uv run python benchmarks/gpu.py --fsdp --width 128 --batch 16            # all GPUs of the machine
    uv run python benchmarks/gpu.py --fsdp --device cpu --procs 2 --size 32 --width 8 --depth 2 --batch 4 --steps 3

The batch (`--batch auto`) doubles from 8 while one fp32 eager step stays under `--fill` of the card's memory; the same
batch is used for every row, so the rows compare like with like.
"""
from __future__ import annotations
import argparse, json, math, os, subprocess, sys, time
from pathlib import Path


def sync(device):
    import torch
    if device.type == 'cuda': torch.cuda.synchronize(device)


def make(a, device, batch:int, amp:bool, compile:bool, mem_budget:float=1.0):
    "A `Trainer` on the UNet with random fields already on the device (data loading is not what is measured)."
    import torch
    from ml_suite.models import UNet
    from ml_suite.trainer import Trainer, TrainSettings
    from ml_suite.train import set_mem_budget
    torch.manual_seed(0)
    x = torch.randn(batch, 1, a.size, a.size, device=device)
    y = torch.randn(batch, 1, a.size, a.size, device=device)
    model = UNet(width=a.width, depth=a.depth, padding_mode='circular')
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == 'cuda')
    if compile: set_mem_budget(mem_budget)
    settings = TrainSettings(amp=amp, precision='bfloat16', compile=compile, device=device, log_every=10 ** 9)
    t = Trainer(model, torch.nn.MSELoss(), opt, None, iter(lambda: (x, y), None), settings=settings)
    return t, (x, y)


def peak_reset(device):
    import torch
    if device.type == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device):
    import torch
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == 'cuda' else None


def measure(a, device, batch, name, amp, compile, mem_budget=1.0)->dict:
    import torch
    torch._dynamo.reset()
    peak_reset(device)
    t, b = make(a, device, batch, amp, compile, mem_budget)
    t0 = time.perf_counter()
    for _ in range(a.warmup): t.train_step([b])
    sync(device); warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.steps): t.train_step([b])
    sync(device); s = (time.perf_counter() - t0) / a.steps
    row = {'config': name, 'batch': batch, 'step_s': s, 'samples_per_s': batch / s, 'peak_gb': peak_gb(device),
           'warmup_s': warm}
    print(f"{name}: {row['samples_per_s']:.1f} samples/s, peak {gb(row['peak_gb'])}, "
          f"warm-up {warm:.1f} s", file=sys.stderr)
    del t
    return row


def step_flops(a, device, batch)->float:
    "FLOPs of one forward and backward pass of the UNet at `batch`, counted by torch."
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    t, (x, y) = make(a, device, batch, amp=False, compile=False)
    with FlopCounterMode(display=False) as fc:
        torch.nn.functional.mse_loss(t.model(x), y).backward()
    return float(fc.get_total_flops())


def matmul_rate(device, n:int, seconds:float=2.0)->float:
    "The bf16 matmul rate (FLOP/s) this device reaches on an n x n x n product."
    import torch
    dt = torch.bfloat16
    A, B = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
    for _ in range(3): A @ B
    sync(device)
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10): A @ B
        k += 10; sync(device)
    return 2 * n ** 3 * k / (time.perf_counter() - t0)


def auto_batch(a, device)->int:
    "The largest power-of-two batch whose fp32 eager step stays under `a.fill` of the card's memory."
    import torch
    if device.type != 'cuda': return 8
    total, batch = torch.cuda.get_device_properties(device).total_memory, 8
    while batch < a.max_batch:
        peak_reset(device)
        try:
            t, b = make(a, device, batch * 2, amp=False, compile=False)
            t.train_step([b]); sync(device); del t, b
        except torch.OutOfMemoryError: break
        if torch.cuda.max_memory_allocated(device) > a.fill * total: break
        batch *= 2
    peak_reset(device)
    return batch


def gb(x)->str: return 'n/a (CPU)' if x is None else f'{x:.2f} GB'


def fsdp_worker(a):
    "One rank of `--fsdp`: DDP, then FSDP, on the UNet with this rank's GPU; rank 0 writes the rows to `a.json`."
    import torch
    from ml_suite.core import DistInfo
    from ml_suite.dist import init_process_group
    from ml_suite.models import UNet
    from ml_suite.trainer import Trainer, TrainSettings, training_memory
    dist = DistInfo.from_env()
    device = torch.device(f'cuda:{dist.local_rank}') if a.device == 'cuda' else torch.device('cpu')
    init_process_group(dist, device)
    batch = int(a.batch) if a.batch != 'auto' else 8
    x = torch.randn(batch, 1, a.size, a.size, device=device)
    rows = []
    for strategy in ('ddp', 'fsdp'):
        torch.manual_seed(0)
        peak_reset(device)
        model = UNet(width=a.width, depth=a.depth, padding_mode='circular')
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        settings = TrainSettings(device=device, log_every=10 ** 9, strategy=strategy, amp=device.type == 'cuda',
                                 precision='bfloat16')
        t = Trainer(model, torch.nn.MSELoss(), opt, None, iter(lambda: (x, x), None), settings=settings, dist=dist)
        for _ in range(a.warmup): t.train_step([(x, x)])
        sync(device); t0 = time.perf_counter()
        for _ in range(a.steps): t.train_step([(x, x)])
        sync(device); s = (time.perf_counter() - t0) / a.steps
        rows.append({'strategy': strategy, 'sharded': t.sharded, 'state_mb': training_memory(t.raw_model, opt) / 2**20,
                     'peak_gb': peak_gb(device), 'samples_per_s': batch * dist.world_size / s})
        del t, model, opt
    if dist.is_main: Path(a.json).write_text(json.dumps({'procs': dist.world_size, 'rows': rows}))
    import torch.distributed as tdist
    if tdist.is_initialized(): tdist.destroy_process_group()
    return 0


def fsdp_main(a):
    "`--fsdp`: `fsdp_worker` under torchrun over `--procs` processes (default: the GPUs); print the table."
    import tempfile, torch
    if a.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run --fsdp on a GPU machine, or with --device cpu --procs 2 (a tiny check)")
    procs = a.procs or (torch.cuda.device_count() if a.device == 'cuda' else 2)
    out = Path(tempfile.mkdtemp()) / 'fsdp.json'
    args = [f'--{k.replace("_", "-")}={v}' for k, v in vars(a).items()
            if k in ('device', 'size', 'width', 'depth', 'batch', 'warmup', 'steps')]
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={procs}', __file__,
           '--fsdp-worker', f'--json={out}', *args]
    r = subprocess.run(cmd, env={**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')})
    if r.returncode: return r.returncode
    res = json.loads(out.read_text())
    card = torch.cuda.get_device_name(0) if a.device == 'cuda' else 'CPU'
    note = '' if procs > 1 else ' (one process: FSDP has nothing to shard, the rows show its overhead alone)'
    print(f"{card} x {procs}, torch {torch.__version__}: UNet width {a.width} depth {a.depth} on {a.size}x{a.size} "
          f"fields, batch {a.batch} per process{note}\n"
          "| strategy | params + grads + optimizer per process | peak memory per process | samples/s (all) |\n"
          "|---|---|---|---|\n"
          + '\n'.join(f"| {r['strategy']}{' (sharded)' if r['sharded'] else ''} | {r['state_mb']:.1f} MB | "
                      f"{gb(r['peak_gb'])} | {r['samples_per_s']:.1f} |" for r in res['rows']))
    if a.out_json: Path(a.out_json).write_text(json.dumps(res, indent=1))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda')
    p.add_argument('--size', type=int, default=256, help='field size (pixels per side)')
    p.add_argument('--width', type=int, default=64, help='UNet channels at full resolution')
    p.add_argument('--depth', type=int, default=4)
    p.add_argument('--batch', default='auto')
    p.add_argument('--fill', type=float, default=0.5, help='auto batch: fraction of the card one fp32 step may use')
    p.add_argument('--max-batch', type=int, default=1024)
    p.add_argument('--warmup', type=int, default=3, help='untimed steps first (compilation happens here)')
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--no-compile', action='store_true', help='skip the torch.compile rows')
    p.add_argument('--matmul-n', type=int, default=8192)
    p.add_argument('--json', help='also write the results here')
    p.add_argument('--fsdp', action='store_true', help='DDP vs FSDP over --procs processes (default: every GPU)')
    p.add_argument('--procs', type=int, default=0)
    p.add_argument('--fsdp-worker', action='store_true', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.fsdp_worker: return fsdp_worker(a)
    if a.fsdp:
        a.out_json = a.json
        return fsdp_main(a)
    import torch
    device = torch.device(a.device)
    if device.type == 'cuda' and not torch.cuda.is_available(): raise SystemExit("no CUDA device: run with --device cpu (and a tiny size)")
    t_start = time.perf_counter()
    batch = auto_batch(a, device) if a.batch == 'auto' else int(a.batch)
    card = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    rows = [measure(a, device, batch, 'fp32 eager', amp=False, compile=False),
            measure(a, device, batch, 'bf16 autocast', amp=True, compile=False)]
    if not a.no_compile:
        for mb in (1.0, 0.5, 0.1):
            rows.append(measure(a, device, batch, f'bf16 + compile, mem_budget {mb}', amp=True, compile=True, mem_budget=mb))
    flops = step_flops(a, device, batch)
    rate = matmul_rate(device, a.matmul_n)
    for r in rows: r['mfu'] = flops / r['step_s'] / rate
    res = {'date': time.strftime('%Y-%m-%d'), 'device': card, 'torch': torch.__version__, 'size': a.size, 'width': a.width,
           'depth': a.depth, 'batch': batch, 'step_flops': flops, 'bf16_matmul_flops_per_s': rate, 'rows': rows,
           'seconds': time.perf_counter() - t_start}
    print(f"{card}, torch {torch.__version__}, {res['date']}: UNet width {a.width} depth {a.depth} on {a.size}x{a.size} fields, "
          f"batch {batch}; {flops / 1e9:.1f} GFLOP per step (forward + backward); measured bf16 matmul rate "
          f"{rate / 1e12:.3g} TFLOP/s; the whole script took {res['seconds']:.0f} s\n"
          "| config | samples/s | step | peak memory | MFU |\n|---|---|---|---|---|\n"
          + '\n'.join(f"| {r['config']} | {r['samples_per_s']:.1f} | {r['step_s'] * 1e3:.1f} ms | "
                      f"{gb(r['peak_gb'])} | "
                      f"{r['mfu'] * 100:.1f}% |" for r in rows))
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == '__main__': sys.exit(main())
