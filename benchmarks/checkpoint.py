"""Checkpoint cost: ml_suite's durable save, the training loop's stall per checkpoint, and load, each against plain PyTorch.

A training state of about `--mb` MB (a stack of linear layers with Adam's moments, as `Trainer.state_dict()` holds it)
is written to and read from one folder (`--dir`, default a temporary folder under the current directory, so the disk
under test is the one the runs use). The variants take turns in every round; before each timed write the previous
files are removed and `os.sync()` runs, outside the timing, so no write pays for another's dirty pages. Reported: the
median over `--rounds` rounds of each variant and the median of the per-round ratios.

    uv run python benchmarks/checkpoint.py                 # ~250 MB, 5 rounds
    uv run python benchmarks/checkpoint.py --mb 20 --rounds 2

- durable save: `save_checkpoint` (temporary file, fsync, rename, folder fsync) vs `torch.save` then fsync;
- stall: `Trainer.save()` with the flush, rename and links in the background vs a plain `torch.save` without fsync;
  the time until the checkpoint is durable is reported too;
- load: `load_checkpoint` vs `torch.load` (both `weights_only`, from the page cache: the file was just written).

`--fsdp` (issue 19) measures the checkpoints of a model sharded by FSDP2 over `--procs` real torchrun processes (CPU,
gloo): `ShardedCheckpointer.save` (every rank writes its shard with `torch.distributed.checkpoint`, committed,
durable) against what a full-state checkpoint does (`get_state_dict(full_state_dict=True, cpu_offload=True)`
gathers the whole state on rank 0, which then writes it with `save_checkpoint`), and the loop's stall of an async
sharded save (`dcp.async_save`) with the time until it is durable. Rank 0's times; the bytes rank 0 holds for each.

    uv run python benchmarks/checkpoint.py --fsdp          # ~250 MB over 2 processes, 5 rounds
"""
from __future__ import annotations
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path


def make_trainer(mb:float, run_dir:Path):
    "A `Trainer` whose `state_dict()` is about `mb` MB: square linear layers (1024 wide) with Adam's two moments."
    import torch
    from ml_suite.trainer import Trainer, TrainSettings, TrainerParts
    side = 1024 if mb >= 13 else max(16, int((mb * 1e6 / 12) ** 0.5))   # smaller layers for a tiny state
    layers = max(1, round(mb * 1e6 / (3 * 4 * (side * side + side))))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(side, side) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(8, side)
    batches = iter(lambda: (x, x), None)
    t = Trainer(model, torch.nn.MSELoss(), opt, None, batches, settings=TrainSettings(10 ** 9, log_every=10 ** 9),
                parts=TrainerParts.in_run_dir(run_dir))
    t.train_step([next(batches)])   # Adam's moments exist from the first step
    return t


def state_mb(state)->float:
    import torch
    def size(o):
        if isinstance(o, torch.Tensor): return o.numel() * o.element_size()
        if isinstance(o, dict): return sum(size(v) for v in o.values())
        if isinstance(o, (list, tuple)): return sum(size(v) for v in o)
        return 0
    return size(state) / 1e6


def fsdp_worker(a):
    "One rank of `--fsdp`: the sharded model and AdamW state, then each variant in turn, timed on rank 0."
    import torch, torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.checkpoint.state_dict import get_state_dict, StateDictOptions
    from ml_suite.checkpoint import ShardedCheckpointer, save_checkpoint
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    side = 1024 if a.mb >= 13 else max(16, int((a.mb * 1e6 / 12) ** 0.5))
    layers = max(2, round(a.mb * 1e6 / (3 * 4 * (side * side + side))))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(side, side) for _ in range(layers)])
    for m in model: fully_shard(m)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(8, side)).square().mean().backward(); opt.step(); opt.zero_grad()
    root = Path(a.dir)
    ck = ShardedCheckpointer(root / 'sharded')
    (root / 'sharded').mkdir(exist_ok=True)
    def sharded(background):
        msd, osd = get_state_dict(model, opt)
        ck.save({'model': msd, 'optim': osd, 'extra': {'updates': 1}}, background=background)
    def gathered():
        full = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0: save_checkpoint({'model': full[0], 'optimizer': full[1]}, root / 'full.pt')
        dist.barrier()
        return full
    local = sum(state_mb(t.to_local()) for t in model.parameters()) * 3   # weights and Adam's two moments
    full_mb = state_mb(gathered())   # every rank takes part in the gather (only rank 0 keeps it on the CPU)
    times = {k: [] for k in ('sharded save (DCP) until durable', 'gather + save_checkpoint on rank 0',
                             'async sharded save: stall', 'async sharded save: until durable')}
    for r in range(a.rounds):
        order = ['sharded', 'gather', 'async']
        for v in order[r % 3:] + order[:r % 3]:
            dist.barrier()
            if rank == 0: os.sync()
            dist.barrier()
            t0 = time.perf_counter()
            if v == 'sharded': sharded(False)
            elif v == 'gather': gathered()
            else:
                sharded(True); t1 = time.perf_counter(); ck.wait()
                times['async sharded save: stall'].append(t1 - t0)
            dt = time.perf_counter() - t0
            times[{'sharded': 'sharded save (DCP) until durable', 'gather': 'gather + save_checkpoint on rank 0',
                   'async': 'async sharded save: until durable'}[v]].append(dt)
        if rank == 0: print(f"round {r + 1}/{a.rounds}: " + ', '.join(f"{k} {v[-1]:.3f} s" for k, v in times.items()),
                            file=sys.stderr)
    if rank == 0:
        Path(a.dir, 'result.json').write_text(json.dumps({'times': times, 'full_mb': full_mb, 'local_mb': local,
                                                          'procs': dist.get_world_size()}))
    dist.destroy_process_group()


def fsdp_main(a):
    "`--fsdp`: run `fsdp_worker` under torchrun with `--procs` processes; print its table."
    root = Path(tempfile.mkdtemp(prefix='ckpt-bench-fsdp-', dir=a.dir or '.')).resolve()
    try:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={a.procs}', __file__,
               '--fsdp-worker', '--mb', str(a.mb), '--rounds', str(a.rounds), '--dir', str(root)]
        r = subprocess.run(cmd, env={**os.environ, 'OMP_NUM_THREADS': '1'})
        if r.returncode: return r.returncode
        res = json.loads((root / 'result.json').read_text())
    finally: shutil.rmtree(root, ignore_errors=True)
    t = res['times']
    ratio = lambda x, y: statistics.median(p / q for p, q in zip(t[x], t[y]))
    res['median_s'] = {k: statistics.median(v) for k, v in t.items()}
    res['ratios'] = {'sharded save / (gather + save on rank 0)': ratio('sharded save (DCP) until durable',
                                                                        'gather + save_checkpoint on rank 0'),
                     'async stall / sharded save': ratio('async sharded save: stall', 'sharded save (DCP) until durable')}
    print(f"FSDP2, {res['procs']} processes (gloo, CPU), training state {res['full_mb']:.0f} MB in all, "
          f"{res['local_mb']:.0f} MB per rank; {a.rounds} rounds, rank 0's medians\n| what | seconds |\n|---|---|\n"
          + '\n'.join(f"| {k} | {v:.3f} |" for k, v in res['median_s'].items())
          + "\n\n| ratio (median of per-round ratios) | value |\n|---|---|\n"
          + '\n'.join(f"| {k} | {v:.3f} |" for k, v in res['ratios'].items())
          + f"\n\nrank 0 holds: {res['full_mb']:.0f} MB gathered for a full-state save, {res['local_mb']:.0f} MB "
            f"(its shard) for a sharded one")
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--mb', type=float, default=250)
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--dir', help='folder to write in (default: a temporary folder under the current directory)')
    p.add_argument('--json', help='also write the results here')
    p.add_argument('--fsdp', action='store_true', help='the sharded rows: FSDP2 over --procs torchrun processes')
    p.add_argument('--procs', type=int, default=2)
    p.add_argument('--fsdp-worker', action='store_true', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.fsdp_worker: return fsdp_worker(a) or 0
    if a.fsdp: return fsdp_main(a)
    import torch
    from ml_suite.checkpoint import save_checkpoint, load_checkpoint, REQUIRED_KEYS
    root = Path(tempfile.mkdtemp(prefix='ckpt-bench-', dir=a.dir or '.'))
    try:
        t = make_trainer(a.mb, root / 'run')
        (root / 'run').mkdir()
        state = t.state_dict()
        mb = state_mb(state)

        def fresh():   # outside the timing: no files, no dirty pages left by the previous variant
            for f in list((root / 'run').iterdir()) + list(root.glob('*.pt')): f.unlink()
            os.sync()

        def plain_save():
            torch.save(state, root / 'plain.pt')

        def plain_durable():   # by name, then fsync: the faster of the two ways to call torch.save
            torch.save(state, root / 'plain.pt')
            fd = os.open(root / 'plain.pt', os.O_RDONLY)
            try: os.fsync(fd)
            finally: os.close(fd)

        def ml_suite_durable():
            save_checkpoint(state, root / 'ml_suite.pt')

        times = {k: [] for k in ('plain torch.save', 'plain torch.save + fsync', 'ml_suite save_checkpoint',
                                 'ml_suite Trainer.save stall', 'ml_suite Trainer.save until durable',
                                 'plain torch.load', 'ml_suite load_checkpoint')}
        for r in range(a.rounds):
            order = [plain_save, plain_durable, ml_suite_durable, 'stall']
            order = order[r % len(order):] + order[:r % len(order)]   # alternate who goes first
            for fn in order:
                fresh()
                t0 = time.perf_counter()
                if fn == 'stall':
                    t.save()                                       # what the training loop waits for
                    t1 = time.perf_counter(); t.checkpointer.wait()  # the flush and rename finish in the background
                    times['ml_suite Trainer.save stall'].append(t1 - t0)
                    times['ml_suite Trainer.save until durable'].append(time.perf_counter() - t0)
                else:
                    fn(); times[{plain_save: 'plain torch.save', plain_durable: 'plain torch.save + fsync',
                                 ml_suite_durable: 'ml_suite save_checkpoint'}[fn]].append(time.perf_counter() - t0)
            save_checkpoint(state, root / 'load.pt')
            for name in (['plain torch.load', 'ml_suite load_checkpoint'] if r % 2 == 0 else ['ml_suite load_checkpoint', 'plain torch.load']):
                t0 = time.perf_counter()
                if name == 'plain torch.load': torch.load(root / 'load.pt', weights_only=True)
                else: load_checkpoint(root / 'load.pt', required=REQUIRED_KEYS)
                times[name].append(time.perf_counter() - t0)
            print(f"round {r + 1}/{a.rounds}: " + ', '.join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), file=sys.stderr)
    finally: shutil.rmtree(root, ignore_errors=True)

    def ratio(a_, b_): return statistics.median(x / y for x, y in zip(times[a_], times[b_]))
    res = {'state_mb': mb, 'rounds': a.rounds, 'median_s': {k: statistics.median(v) for k, v in times.items()},
           'ratios': {'durable save: save_checkpoint / (torch.save + fsync)': ratio('ml_suite save_checkpoint', 'plain torch.save + fsync'),
                      'stall: Trainer.save / torch.save': ratio('ml_suite Trainer.save stall', 'plain torch.save'),
                      'until durable: Trainer.save + flush / (torch.save + fsync)': ratio('ml_suite Trainer.save until durable', 'plain torch.save + fsync'),
                      'load: load_checkpoint / torch.load': ratio('ml_suite load_checkpoint', 'plain torch.load')}}
    print(f"training state {mb:.0f} MB, {a.rounds} rounds, medians\n| what | seconds |\n|---|---|\n"
          + '\n'.join(f"| {k} | {v:.3f} |" for k, v in res['median_s'].items())
          + "\n\n| ratio (median of per-round ratios) | value |\n|---|---|\n"
          + '\n'.join(f"| {k} | {v:.3f} |" for k, v in res['ratios'].items()))
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == '__main__': sys.exit(main())
