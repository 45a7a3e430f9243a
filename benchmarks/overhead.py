"""Per-update overhead on CPU: a hand-written PyTorch loop vs ml_suite's Trainer vs PyTorch Lightning's Trainer.

The same 3-layer MLP, batch, data, seed and optimizer for all three, one thread. The machine this was written on is
shared and noisy, so the plain loop and a contender take turns *inside one process*: every `--block` updates of the
contender, the contender's data iterator runs `--block` updates of the plain loop (its own model and optimizer).
Both record a timestamp after every update; intervals that span a switch are dropped, as are the first `--warmup`
updates. Reported, per process and then as the median over `--rounds` processes: the median per-update time of each
(the issue's measure), the mean per update (which counts validations and checkpoints), and their ratios to the plain
loop measured alongside. Whether the final weights are bitwise equal to the plain loop's is checked in the same
process. Peak resident memory comes from separate processes that run one contender alone.

    uv run python benchmarks/overhead.py                       # train only, 5 rounds
    uv run python benchmarks/overhead.py --mode val --every 100  # with validation every 100 updates
    uv run python benchmarks/overhead.py --mode ckpt --every 100 # with a checkpoint every 100 updates
    uv run python benchmarks/overhead.py --mode ema --contenders plain,ml_suite  # with an EMA of the weights

In `--mode ema` both keep an exponential moving average of the weights (`--ema-decay`, 0.999) after every update:
the plain loop by hand, with `torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))`
and `update_parameters(model)` after each `opt.step()`, the ml_suite Trainer with its `ema` callback
(`ml_suite.ema.EMA(decay)` in `TrainerParts(callbacks=...)`). The final weights of the model and of the average are
both compared with the plain loop's, bit for bit. With `--contenders ml-suite-train`, the command line gets
`callbacks: [{name: ema, decay: ...}]` and plain_loop.py `--ema-decay`; the run's `eval_model` is compared with the
plain loop's average. (Lightning is left out of this mode.)

On the path users run (`--contenders ml-suite-train`, in the default set): the `ml-suite-train` command in a
subprocess, with a user's model and dataset given by import path (`user_mlp.py`: an MLP 256-256-256-1 and a tensor
dataset; batch 64, AdamW, no clipping, no schedule, one thread), against the hand-written loop of `plain_loop.py` over
the same data in a subprocess. Each side runs a short and a long training (`--cli-updates`, 200 and 2200 updates);
the cost per update is the slope between them, so that start-up (imports, building, the final validation and
checkpoint) cancels. Every round runs the four processes in turns; reported are the median and range over rounds of
the ratio of the slopes, wall clock and CPU time of the process, and whether the final weights of both equal the
plain loop's bit for bit. In a round each side runs each length `--cli-repeats` times (3), the sides and the lengths
taking turns (A B at short, B A at long, A B at long, ...), so that a drift of the machine's speed weighs on both
alike, and each (side, length) counts with the median of its runs, so that one run a neighbour disturbed does not
move the round; the slope taken from each (side, length)'s fastest run over all rounds is reported too.

Lightning comes from the benchmark-only extra: `uv sync --extra bench`. Without it, Lightning's column is skipped.
"""
from __future__ import annotations
import argparse, hashlib, json, os, resource, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

CONTENDERS = ('plain', 'ml_suite', 'lightning')
CLI = 'ml-suite-train'   # the command line, in a subprocess, against plain_loop.py
HERE = Path(__file__).resolve().parent


def make_setup(seed:int, in_features:int, hidden:int, outputs:int, batch:int, n_batches:int, n_val:int):
    "The model, optimizer and data every contender starts from: same seed, same tensors."
    import torch
    g = torch.Generator().manual_seed(seed + 1)
    unique = [(torch.randn(batch, in_features, generator=g), torch.randn(batch, outputs, generator=g)) for _ in range(64)]
    val = [(torch.randn(batch, in_features, generator=g), torch.randn(batch, outputs, generator=g)) for _ in range(n_val)]
    data = [unique[i % len(unique)] for i in range(n_batches)]  # one long epoch of the same 64 batches
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(in_features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                                torch.nn.ReLU(), torch.nn.Linear(hidden, outputs))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, opt, torch.nn.MSELoss(), data, val


def plain_steps(model, opt, crit, data, val, mode, every, ckpt_dir, stamps, keep=None, decay=0.999):
    "The hand-written loop, as a generator that pauses after each update (`mode` ema: its average in `keep['ema']`)."
    import torch
    model.train()
    if mode == 'ema':
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
        if keep is not None: keep['ema'] = ema.module
    for step, (x, y) in enumerate(data, 1):
        loss = crit(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mode == 'ema': ema.update_parameters(model)
        if mode == 'val' and step % every == 0:
            model.eval()
            with torch.no_grad(): vl = sum(crit(model(vx), vy).item() * len(vx) for vx, vy in val) / sum(len(vx) for vx, _ in val)
            model.train()
        if mode == 'ckpt' and step % every == 0:
            torch.save({'model': model.state_dict(), 'optimizer': opt.state_dict(), 'step': step}, Path(ckpt_dir) / 'last.pt')
        stamps.append((time.perf_counter(), time.process_time()))
        yield


def run_plain(*args, decay=0.999):
    keep = {}
    for _ in plain_steps(*args, keep=keep, decay=decay): pass
    return keep.get('ema')


class Interleaved:
    "The contender's batches; every `block` of them, `block` updates of the plain loop run first."
    def __init__(self, data:list, block:int, baseline, own:list, base:list):
        self.data, self.block, self.baseline, self.own, self.base = data, block, baseline, own, base
    def __len__(self): return len(self.data)
    def __iter__(self):
        for i, b in enumerate(self.data):
            if i and i % self.block == 0:
                self.own.append(None); self.base.append(None)   # the switch: no update interval spans it
                for _ in range(self.block): next(self.baseline, None)
            yield b


class _Stamps:
    "Stands in for the trainer's progress display: called after every update, it records the time."
    def __init__(self, stamps:list): self.stamps, self.last = stamps, -1
    def update(self, updates:int, row=None):
        if updates != self.last: self.stamps.append((time.perf_counter(), time.process_time())); self.last = updates
    def close(self): pass


def run_ml_suite(model, opt, crit, data, val, mode, every, ckpt_dir, stamps, decay=0.999):
    from ml_suite.trainer import Trainer, TrainSettings, TrainerParts
    from ml_suite.cadence import CheckpointPolicy
    from ml_suite.evaluator import Evaluator
    n = len(data)
    per_epoch = every if mode == 'val' else n
    # log_every beyond the end: tracking off
    settings = TrainSettings(total_updates=n, updates_per_epoch=per_epoch, log_every=n + 1)
    policy = CheckpointPolicy(per_epoch, every_updates=every if mode == 'ckpt' else 0)
    parts = TrainerParts.in_run_dir(ckpt_dir, policy=policy) if mode == 'ckpt' else TrainerParts(policy=policy)
    if mode == 'ema':
        from ml_suite.ema import EMA
        parts.callbacks = [EMA(decay)]
    t = Trainer(model, crit, opt, None, iter(data), val if mode == 'val' else None,
                Evaluator(crit) if mode == 'val' else None, settings, parts)
    t.recorder.attach(progress=_Stamps(stamps))
    t.fit()
    return parts.callbacks[0].module if mode == 'ema' else None


def run_lightning(model, opt, crit, data, val, mode, every, ckpt_dir, stamps, decay=None):
    import logging, warnings
    import torch, lightning as L
    for name in ('lightning', 'lightning.pytorch', 'lightning.fabric'): logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings('ignore')

    class Module(L.LightningModule):
        def __init__(self): super().__init__(); self.net = model
        def training_step(self, batch, i): return crit(self.net(batch[0]), batch[1])
        def validation_step(self, batch, i): return crit(self.net(batch[0]), batch[1])
        def configure_optimizers(self): return opt

    class Stamps(L.Callback):
        def on_train_batch_end(self, *a): stamps.append((time.perf_counter(), time.process_time()))

    cbs = [Stamps()]
    if mode == 'ckpt':
        from lightning.pytorch.callbacks import ModelCheckpoint
        cbs.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=every, save_top_k=1))
    tr = L.Trainer(accelerator='cpu', devices=1, max_steps=len(data), max_epochs=1, logger=False, callbacks=cbs,
                   enable_checkpointing=mode == 'ckpt', enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, limit_val_batches=len(val) if mode == 'val' else 0,
                   val_check_interval=every if mode == 'val' else None, check_val_every_n_epoch=None if mode == 'val' else 1)
    tr.fit(Module(), train_dataloaders=data if isinstance(data, Interleaved) else _Batches(data), val_dataloaders=_Batches(val) if mode == 'val' else None)


class _Batches:
    "The batch list as one iterable (Lightning reads a bare list as a list of loaders)."
    def __init__(self, batches:list): self.batches = batches
    def __iter__(self): return iter(self.batches)
    def __len__(self): return len(self.batches)


def intervals(stamps:list, warmup:int, clock:int=0)->list[list[float]]:
    "Per-update durations (`clock` 0: wall, 1: CPU) after the first `warmup` updates, one list per block (None marks a switch)."
    blocks, cur, n, prev = [], [], 0, None
    for t in stamps:
        if t is None: prev = None; blocks.append(cur) if cur else None; cur = []; continue
        n += 1
        if prev is not None and n > warmup: cur.append(t[clock] - prev[clock])
        prev = t
    if cur: blocks.append(cur)
    return blocks


def sha(model)->str:
    import torch
    return hashlib.sha256(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().tobytes()).hexdigest()


def one(a)->dict:
    "Run one contender in this process (with the plain loop interleaved, or alone) and return its measurements."
    import torch
    torch.set_num_threads(1)
    if a.contender == 'ml_suite': import ml_suite.trainer, ml_suite.evaluator  # imported before the memory baseline, as torch is
    if a.contender == 'lightning': import lightning
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = a.warmup + a.updates
    model, opt, crit, data, val = make_setup(a.seed, a.in_features, a.hidden, a.outputs, a.batch, n, a.val_batches)
    own, base, keep = [], [], {}
    with tempfile.TemporaryDirectory() as d:
        if a.alone: run_fn, feed = RUN[a.contender], data
        else:
            pm, po, _, pdata, _ = make_setup(a.seed, a.in_features, a.hidden, a.outputs, a.batch, n, a.val_batches)
            Path(d, 'plain').mkdir()
            baseline = plain_steps(pm, po, crit, pdata, val, a.mode, a.every, Path(d, 'plain'), base, keep, a.ema_decay)
            run_fn, feed = RUN[a.contender], Interleaved(data, a.block, baseline, own, base)
        ema = run_fn(model, opt, crit, feed, val, a.mode, a.every, d, own, decay=a.ema_decay)
        if base: 
            for _ in baseline: pass   # the plain loop finishes its updates too
    res = {'contender': a.contender, 'alone': a.alone,
           'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'rss_before_mb': rss0 / 1024,
           'weights_sha256': sha(model)}
    if a.mode == 'ema': res['ema_sha256'] = sha(ema)
    real = [t for t in own if t is not None]
    assert len(real) == n, f"{a.contender} recorded {len(real)} updates, expected {n}"
    if base:
        flat = lambda bs: [x for b in bs for x in b]
        for clock, pre in ((0, ''), (1, 'cpu_')):   # wall clock, and this process's CPU time (what neighbours cannot take)
            ob, bb = intervals(own, a.warmup, clock), intervals(base, a.warmup, clock)
            res.update({pre + 'median_s': statistics.median(flat(ob)), pre + 'base_median_s': statistics.median(flat(bb)),
                        pre + 'mean_s': statistics.median(statistics.fmean(b) for b in ob),
                        pre + 'base_mean_s': statistics.median(statistics.fmean(b) for b in bb),
                        pre + 'mean_ratio': statistics.median(statistics.fmean(o) / statistics.fmean(b) for o, b in zip(ob, bb))})
            res[pre + 'median_ratio'] = res[pre + 'median_s'] / res[pre + 'base_median_s']
        res.update(blocks=min(len(ob), len(bb)), weights_equal_plain=sha(model) == sha(pm))
        if a.mode == 'ema': res['ema_equal_plain'] = res['ema_sha256'] == sha(keep['ema'])
    return res


# --- the path users run: ml-suite-train in a subprocess vs plain_loop.py in a subprocess ------------------------------

def cli_config(run_dir:Path, updates:int, a)->str:
    "The YAML a user would write for user_mlp's model and dataset: batch 64, AdamW, no clipping, no schedule."
    return (f"dataset: {{name: 'user_mlp:TensorData', num_samples: {a.cli_samples}, in_features: {a.cli_width}}}\n"
            f"model: {{type: 'user_mlp:MLP', criterion: mse, in_features: {a.cli_width}, hidden: {a.cli_width}}}\n"
            f"batch_size: {a.batch}\ntotal_updates: {updates}\nlog_every: {a.log_every}\nseed: {a.seed}\n"
            f"optimizer: {{name: AdamW, learning_rate: 1.0e-3}}\nrun_dir: {run_dir}\n"
            + (f"callbacks: [{{name: ema, decay: {a.ema_decay}}}]\n" if a.mode == 'ema' else ''))


def timed(cmd:list, env:dict, cwd:Path)->tuple[float, float]:
    "Run `cmd` to its end; its wall time (launch to exit) and the CPU time (user + system) it used."
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode: raise SystemExit(f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall, (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)


def same_weights(plain_file:Path, run_dir:Path, ema:bool=False)->bool:
    "Whether the plain loop's final state dict equals the model in the run's latest.pt (`ema`: and the EMA), bit for bit."
    import torch
    eq = lambda a, b: sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    run = torch.load(run_dir / 'latest.pt', weights_only=True)
    same = eq(torch.load(plain_file, weights_only=True), run['model'])
    if not ema: return same
    return same and eq(torch.load(plain_file.with_suffix('.ema.pt'), weights_only=True), run.get('eval_model') or {})


def cli_round(a, r:int, d:Path, exe:str, env:dict)->dict:
    "One round: the short and the long run of each side, in turns; the slopes, their ratios, and the weights check."
    short, long = a.cli_updates
    plain_args = [f'--batch={a.batch}', f'--samples={a.cli_samples}', f'--in-features={a.cli_width}',
                  f'--hidden={a.cli_width}', f'--seed={a.seed}', f'--log-every={a.log_every}']
    if a.mode == 'ema': plain_args.append(f'--ema-decay={a.ema_decay}')
    times, equal = {}, []
    # the sides and the lengths take turns, so a drift of the machine's speed during the round weighs on both alike
    one, two = ('plain', CLI) if r % 2 == 0 else (CLI, 'plain')
    jobs = []
    for k in range(a.cli_repeats):
        sides, lengths = ((one, two), (short, long)) if k % 2 == 0 else ((two, one), (long, short))
        jobs += [(side, n) for n in lengths for side in (sides if n == lengths[0] else sides[::-1])]
    for side, n in jobs:
        run_dir, weights = d / f'run_{r}_{n}', d / f'plain_{r}_{n}.pt'
        if side == CLI:
            cfg = d / f'train_{r}_{n}.yml'
            cfg.write_text(cli_config(run_dir, n, a))
            shutil.rmtree(run_dir, ignore_errors=True)   # a fresh run each time, not a resume
            times.setdefault((side, n), []).append(timed([exe, str(cfg)], env, d))
        else:
            times.setdefault((side, n), []).append(timed([sys.executable, str(HERE / 'plain_loop.py'), f'--updates={n}',
                                                          f'--out={weights}', *plain_args], env, d))
    for n in (short, long): equal.append(same_weights(d / f'plain_{r}_{n}.pt', d / f'run_{r}_{n}', a.mode == 'ema'))
    res = {'weights_equal_plain': all(equal), 'times': {f'{side} {n}': v for (side, n), v in times.items()}}
    for clock, pre in ((0, 'wall_'), (1, 'cpu_')):
        # the median of the runs: one run slowed by a neighbour does not move it
        mid = lambda side, n: statistics.median(t[clock] for t in times[side, n])
        for side in ('plain', CLI):
            res[pre + side + "_us"] = (mid(side, long) - mid(side, short)) / (long - short) * 1e6
            res[pre + side + "_short_s"] = mid(side, short)
        res[pre + 'ratio'] = res[pre + CLI + '_us'] / res[pre + 'plain_us']
    return res


def slope_of_minima(rounds:list, a)->dict:
    "The ratio of the slopes taken from each (side, length)'s fastest run over all rounds: the least disturbed ones."
    short, long = a.cli_updates
    out = {}
    for clock, pre in ((0, 'wall_'), (1, 'cpu_')):
        best = lambda side, n: min(t[clock] for x in rounds for t in x['times'][f'{side} {n}'])
        slope = {side: (best(side, long) - best(side, short)) / (long - short) * 1e6 for side in ('plain', CLI)}
        out[pre + 'min_plain_us'], out[pre + 'min_' + CLI + '_us'] = slope['plain'], slope[CLI]
        out[pre + 'min_ratio'] = slope[CLI] / slope['plain']
    return out


def run_cli(a)->dict:
    "The CLI comparison over `a.rounds` rounds: medians and ranges of the per-update slopes and their ratio."
    exe = shutil.which(CLI, path=str(Path(sys.executable).parent)) or shutil.which(CLI)
    if exe is None: raise SystemExit(f"{CLI} not found beside {sys.executable}; run `uv sync` first.")
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1',
           'PYTHONPATH': os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep)}
    rounds = []
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.rounds):
            rounds.append(cli_round(a, r, Path(d), exe, env))
            x = rounds[-1]
            print(f"round {r + 1}/{a.rounds} {CLI}: per update {x['wall_' + CLI + '_us']:.0f} us vs plain "
                  f"{x['wall_plain_us']:.0f} us (wall ratio {x['wall_ratio']:.3f}, CPU ratio {x['cpu_ratio']:.3f}); "
                  f"weights equal: {x['weights_equal_plain']}", file=sys.stderr)
    med = statistics.median
    out = {'updates': list(a.cli_updates), 'rounds': a.rounds, 'weights_equal_plain': all(x['weights_equal_plain'] for x in rounds),
           'model': f"MLP {a.cli_width}-{a.cli_width}-{a.cli_width}-1 and a tensor dataset of {a.cli_samples} samples "
                    f"by import path, batch {a.batch}, MSE, AdamW, no clipping, no schedule, log every {a.log_every}, "
                    f"1 thread" + (f", an EMA (decay {a.ema_decay}) after every update" if a.mode == 'ema' else ''),
           'per_round': rounds}
    for k in rounds[0]:
        if k not in ('weights_equal_plain', 'times'): out[k] = med(x[k] for x in rounds)
    out.update(slope_of_minima(rounds, a))
    for pre in ('wall_', 'cpu_'): out[pre + 'ratio_range'] = [min(x[pre + 'ratio'] for x in rounds), max(x[pre + 'ratio'] for x in rounds)]
    return out


def format_cli_table(res:dict)->str:
    "The CLI comparison as a markdown table."
    def rr(pre): return f"{res[pre + 'ratio']:.3f} [{res[pre + 'ratio_range'][0]:.3f}, {res[pre + 'ratio_range'][1]:.3f}]"
    short, long = res['updates']
    return '\n'.join([
        f"{CLI} (subprocess) vs plain_loop.py (subprocess): {res['model']}; per update = slope between a {short}- and a "
        f"{long}-update run; {res['rounds']} rounds, medians [min, max]",
        '| contender | per update (wall) | per update (CPU) | ratio to plain (wall) | ratio to plain (CPU) '
        f"| {short}-update run (wall) | weights{' and EMA' if 'EMA' in res['model'] else ''} == plain |",
        '|---|---|---|---|---|---|---|',
        f"| plain loop | {res['wall_plain_us']:.0f} us | {res['cpu_plain_us']:.0f} us | 1 | 1 | "
        f"{res['wall_plain_short_s']:.2f} s | True |",
        f"| {CLI} | {res['wall_' + CLI + '_us']:.0f} us | {res['cpu_' + CLI + '_us']:.0f} us | {rr('wall_')} | "
        f"{rr('cpu_')} | {res['wall_' + CLI + '_short_s']:.2f} s | {res['weights_equal_plain']} |",
        f"From each (side, length)'s fastest run over the rounds: plain {res['wall_min_plain_us']:.0f} us, {CLI} "
        f"{res['wall_min_' + CLI + '_us']:.0f} us per update, ratio {res['wall_min_ratio']:.3f} (wall); "
        f"{res['cpu_min_ratio']:.3f} (CPU)"])


RUN = {'plain': run_plain, 'ml_suite': run_ml_suite, 'lightning': run_lightning}


def available(name:str)->bool:
    if name != 'lightning': return True
    import importlib.util
    return importlib.util.find_spec('lightning') is not None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--mode', choices=('train', 'val', 'ckpt', 'ema'), default='train',
                   help='train only, or with validation / checkpoints every --every updates, or with an EMA of the weights')
    p.add_argument('--ema-decay', type=float, default=0.999, help='--mode ema: the decay of the average')
    p.add_argument('--every', type=int, default=100)
    p.add_argument('--rounds', type=int, default=5, help='processes per contender (each interleaves many blocks)')
    p.add_argument('--updates', type=int, default=2000, help='timed updates per contender and process')
    p.add_argument('--warmup', type=int, default=100, help='untimed updates first')
    p.add_argument('--block', type=int, default=20, help='updates per turn before switching (short turns follow the machine\'s drift closely)')
    p.add_argument('--in-features', type=int, default=784)
    p.add_argument('--hidden', type=int, default=128)
    p.add_argument('--outputs', type=int, default=10)
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--val-batches', type=int, default=10)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--contenders', default=f'plain,ml_suite,lightning,{CLI}',
                   help=f'plain: the loop against itself (an A/A check: the resolution of the measurement); {CLI}: '
                        f'the command line against plain_loop.py, each in a subprocess')
    p.add_argument('--cli-updates', type=lambda v: tuple(int(x) for x in v.split(',')), default=(200, 2200),
                   help=f'{CLI}: the short and the long run, in updates (the slope between them is the cost per update)')
    p.add_argument('--cli-repeats', type=int, default=3, help=f'{CLI}: runs of each side and length per round')
    p.add_argument('--cli-width', type=int, default=256, help=f'{CLI}: the MLP\'s input and hidden width')
    p.add_argument('--cli-samples', type=int, default=4096, help=f'{CLI}: samples in the training split')
    p.add_argument('--log-every', type=int, default=10, help=f'{CLI}: a log row (and a printed loss in the plain loop) every this many updates')
    p.add_argument('--json', help='also write the results here')
    p.add_argument('--contender', help=argparse.SUPPRESS)  # internal: run one contender in this process
    p.add_argument('--alone', action='store_true', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.contender: print(json.dumps(one(a))); return 0

    asked = a.contenders.split(',')
    if a.mode == 'ema' and 'lightning' in asked:
        print("--mode ema leaves out lightning (the EMA is compared with torch's AveragedModel)", file=sys.stderr)
        asked = [c for c in asked if c != 'lightning']
    names = [c for c in asked if c != CLI and available(c)]
    skipped = [c for c in asked if c != CLI and c not in names]
    if skipped: print(f"skipped (not installed): {', '.join(skipped)}; install with `uv sync --extra bench`", file=sys.stderr)
    passthrough = [f'--{k.replace("_", "-")}={v}' for k, v in vars(a).items()
                   if k in ('mode', 'every', 'updates', 'warmup', 'block', 'in_features', 'hidden', 'outputs', 'batch', 'val_batches', 'seed',
                            'ema_decay')]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    res = {}
    if names: res = run_trainer_level(a, names, passthrough, env)
    if CLI in asked:
        res['cli'] = run_cli(a)
        print(format_cli_table(res['cli']))
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


def run_trainer_level(a, names:list, passthrough:list, env:dict)->dict:
    "The comparison inside one process: each contender taking turns with the plain loop, then each alone."
    def run(c, *extra):
        out = subprocess.run([sys.executable, __file__, f'--contender={c}', *passthrough, *extra], env=env, capture_output=True, text=True)
        if out.returncode: raise SystemExit(f"{c} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    runs = {c: [] for c in names}
    for r in range(a.rounds):
        for c in names[r % len(names):] + names[:r % len(names)]:  # alternate who goes first
            runs[c].append(run(c))
            x = runs[c][-1]
            print(f"round {r + 1}/{a.rounds} {c}: wall median {x['median_s'] * 1e6:.0f} us vs plain {x['base_median_s'] * 1e6:.0f} us "
                  f"(ratio {x['median_ratio']:.3f}), mean ratio {x['mean_ratio']:.3f}; CPU median ratio {x['cpu_median_ratio']:.3f}, "
                  f"mean ratio {x['cpu_mean_ratio']:.3f}", file=sys.stderr)
    alone = {c: run(c, '--alone') for c in dict.fromkeys(['plain', *names])}
    res = summarize(runs, alone, a)
    print(format_table(res))
    return res


def summarize(runs:dict, alone:dict, a)->dict:
    med = statistics.median
    out = {'mode': a.mode, 'every': a.every, 'ema_decay': a.ema_decay if a.mode == 'ema' else None, 'rounds': a.rounds, 'updates': a.updates, 'warmup': a.warmup, 'block': a.block,
           'model': f"MLP {a.in_features}-{a.hidden}-{a.hidden}-{a.outputs}, batch {a.batch}, MSE, Adam, 1 thread", 'contenders': {}}
    p0 = alone['plain']
    for c, rs in runs.items():
        m = alone[c]
        out['contenders'][c] = r = {}
        for pre in ('', 'cpu_'):
            r.update({pre + 'median_us': med(x[pre + 'median_s'] for x in rs) * 1e6, pre + 'mean_us': med(x[pre + 'mean_s'] for x in rs) * 1e6,
                      pre + 'base_median_us': med(x[pre + 'base_median_s'] for x in rs) * 1e6})
            for k in ('median_ratio', 'mean_ratio'):
                r[pre + k], r[pre + k + '_range'] = med(x[pre + k] for x in rs), [min(x[pre + k] for x in rs), max(x[pre + k] for x in rs)]
        r.update({
            'peak_rss_mb': m['peak_rss_mb'], 'peak_rss_ratio': m['peak_rss_mb'] / p0['peak_rss_mb'],
            'train_rss_mb': m['peak_rss_mb'] - m['rss_before_mb'],
            'weights_equal_plain': all(x['weights_equal_plain'] for x in rs) and m['weights_sha256'] == p0['weights_sha256']})
        if a.mode == 'ema':   # the model and the average, each equal to the plain loop's
            r['ema_equal_plain'] = all(x['ema_equal_plain'] for x in rs) and m['ema_sha256'] == p0['ema_sha256']
    return out


def format_table(res:dict)->str:
    def rr(r, k): return f"{r[k]:.3f} [{r[k + '_range'][0]:.3f}, {r[k + '_range'][1]:.3f}]"
    ema = res['mode'] == 'ema'
    extra = f" (decay {res['ema_decay']}, after every update)" if ema else f" every {res['every']}" if res['mode'] != 'train' else ''
    lines = [f"{res['model']}; mode {res['mode']}" + extra
             + f"; {res['rounds']} processes per contender, each {res['updates']} timed updates (after {res['warmup']}) "
               f"alternating with the plain loop every {res['block']}; medians over processes [min, max]",
             '| contender | median per update (CPU) | ratio to plain: median (CPU) | mean (CPU) | median (wall) | mean (wall) '
             '| peak RSS alone (ratio) | RSS growth in training | weights == plain |' + (' EMA == plain |' if ema else ''),
             '|---|---|---|---|---|---|---|---|---|' + ('---|' if ema else '')]
    for c, r in res['contenders'].items():
        lines.append(f"| {'plain (A/A: against itself)' if c == 'plain' else c} | {r['cpu_median_us']:.0f} us (plain {r['cpu_base_median_us']:.0f} us) "
                     f"| {rr(r, 'cpu_median_ratio')} | {rr(r, 'cpu_mean_ratio')} | {rr(r, 'median_ratio')} | {rr(r, 'mean_ratio')} "
                     f"| {r['peak_rss_mb']:.0f} MB ({r['peak_rss_ratio']:.3f}) | {r['train_rss_mb']:.1f} MB | {r['weights_equal_plain']} |"
                     + (f" {r['ema_equal_plain']} |" if ema else ''))
    return '\n'.join(lines)


if __name__ == '__main__': sys.exit(main())
