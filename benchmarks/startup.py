"""Start-up and use of a time budget, timed from outside the process (wall clock from launch to exit).

1. `ml-suite-train CONFIG --dry-run` vs `python -c "import torch"`, taking turns, `--rounds` each; medians and the
   median of the per-round ratios.
2. `ml-suite-train CONFIG time_limit=LIMIT` with more updates than fit, `--limit-runs` times: each run must stop by
   itself (exit code 3, "stopped early") with a checkpoint, within the budget. The budget counts from process start
   (the launch of the process, as a scheduler counts it); "work" is the time the run spent in updates, validations and
   saves, as its time keeper measured them (stored in the checkpoint); "start-up" is the time from the launch until
   training began (`startup_s` in the run's `starts.jsonl`); "unused" is the budget left when the process had exited.
   For scale, `python -c "import torch, torch._dynamo"` (what any training process imports before its first optimizer
   step) is timed in the same run. Reported per run and as the worst case.

    uv run python benchmarks/startup.py                          # 5 + 5 runs with a 60 s limit: about 6 minutes
    uv run python benchmarks/startup.py --limit 20 --limit-runs 1 --rounds 2
"""
from __future__ import annotations
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(cmd:list, **kw)->tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    return time.perf_counter() - t0, out


def train_cmd()->list:
    exe = Path(sys.executable).with_name('ml-suite-train')
    return [str(exe)] if exe.exists() else [sys.executable, '-m', 'ml_suite.train']


def dry_run_vs_import(config:str, rounds:int)->dict:
    dry, imp, dyn = [], [], []
    for r in range(rounds):
        pair = [('dry', train_cmd() + [config, '--dry-run', 'run_dir=runs/startup-bench']), ('import', [sys.executable, '-c', 'import torch'])]
        for name, cmd in (pair if r % 2 == 0 else pair[::-1]) + [('dynamo', [sys.executable, '-c', 'import torch, torch._dynamo'])]:
            s, out = wall(cmd)
            if out.returncode: raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
            {'dry': dry, 'import': imp, 'dynamo': dyn}[name].append(s)
        print(f"round {r + 1}/{rounds}: dry run {dry[-1]:.2f} s, import torch {imp[-1]:.2f} s, "
              f"import torch, torch._dynamo {dyn[-1]:.2f} s", file=sys.stderr)
    return {'dry_run_s': statistics.median(dry), 'import_torch_s': statistics.median(imp), 'import_dynamo_s': statistics.median(dyn),
            'ratio': statistics.median(d / i for d, i in zip(dry, imp)), 'ratio_range': [min(d / i for d, i in zip(dry, imp)), max(d / i for d, i in zip(dry, imp))]}


def time_limited(config:str, limit:float, runs:int, updates:int)->dict:
    import torch
    rows = []
    for r in range(runs):
        d = Path(tempfile.mkdtemp(prefix='limit-bench-', dir='.'))
        try:
            s, out = wall(train_cmd() + [config, f'time_limit={limit:g}', f'total_updates={updates}', f'run_dir={d}'])
            ck = d / 'latest.pt'
            row = {'wall_s': s, 'exit_code': out.returncode, 'checkpoint': ck.exists(), 'unused_s': limit - s}
            starts = d / 'starts.jsonl'
            if starts.exists(): row['startup_s'] = json.loads(starts.read_text().splitlines()[0]).get('startup_s')
            if ck.exists():
                st = torch.load(ck, weights_only=True)
                tk = st['timekeeper']
                work = {k: v['n'] * v['mean'] for k, v in tk.items()}
                row.update(updates=st['updates'], work_s=sum(work.values()), **{f'{k}_s': v for k, v in work.items()})
                row['work_fraction'] = row['work_s'] / limit
            row['wall_fraction'] = s / limit
            rows.append(row)
            print(f"run {r + 1}/{runs}: exit {row['exit_code']}, wall {s:.2f} s of {limit:g}, start-up {row.get('startup_s')} s, "
                  f"work {row.get('work_s', 0):.2f} s, updates {row.get('updates')}", file=sys.stderr)
            if out.returncode not in (0, 3): print(out.stderr[-2000:], file=sys.stderr)
        finally: shutil.rmtree(d, ignore_errors=True)
    ok = [r for r in rows if r['checkpoint']]
    return {'limit_s': limit, 'runs': rows,
            'worst_wall_fraction': max(r['wall_fraction'] for r in rows),
            'worst_work_fraction': min((r['work_fraction'] for r in ok), default=0.0),
            'all_stopped_with_checkpoint': all(r['exit_code'] == 3 and r['checkpoint'] for r in rows)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default=str(ROOT / 'configs' / 'quickstart.yml'))
    p.add_argument('--rounds', type=int, default=5, help='dry runs and torch imports, each')
    p.add_argument('--limit', type=float, default=60.0, help='time_limit in seconds')
    p.add_argument('--limit-runs', type=int, default=5)
    p.add_argument('--updates', type=int, default=10 ** 6, help='total_updates: more than fit in the limit')
    p.add_argument('--json', help='also write the results here')
    a = p.parse_args(argv)
    res = {}
    if a.rounds: res['dry_run'] = dry_run_vs_import(a.config, a.rounds)
    if a.limit_runs: res['time_limit'] = time_limited(a.config, a.limit, a.limit_runs, a.updates)
    if 'dry_run' in res:
        d = res['dry_run']
        print(f"dry run {d['dry_run_s']:.2f} s vs import torch {d['import_torch_s']:.2f} s (medians of {a.rounds}); "
              f"ratio {d['ratio']:.2f} [{d['ratio_range'][0]:.2f}, {d['ratio_range'][1]:.2f}]; "
              f"import torch, torch._dynamo {d['import_dynamo_s']:.2f} s")
    if 'time_limit' in res:
        t = res['time_limit']
        print(f"time limit {t['limit_s']:g} s, {len(t['runs'])} runs: all stopped by themselves with a checkpoint: "
              f"{t['all_stopped_with_checkpoint']}; worst wall {t['worst_wall_fraction']:.3f} of the budget; "
              f"worst work {t['worst_work_fraction']:.3f} of the budget\n"
              "| run | exit | wall, launch to exit | start-up | work (updates + validation + saves) | unused | updates |\n"
              "|---|---|---|---|---|---|---|\n"
              + '\n'.join(f"| {i + 1} | {r['exit_code']} | {r['wall_s']:.2f} s ({r['wall_fraction']:.3f}) | "
                          f"{r.get('startup_s') or 0:.2f} s | {r.get('work_s', 0):.2f} s ({r.get('work_fraction', 0):.3f}) | "
                          f"{r['unused_s']:.2f} s | {r.get('updates')} |" for i, r in enumerate(t['runs'])))
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == '__main__': sys.exit(main())
