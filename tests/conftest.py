import json, os, subprocess, sys
from pathlib import Path
import pytest, yaml

ROOT = Path(__file__).resolve().parent.parent

def tiny_config(**over) -> dict:
    "A config that trains in a second or two on a CPU."
    cfg = dict(seed=0, dataset=dict(name='heat', size=16, modes=4, num_samples=128),
               model=dict(type='unet', width=4, depth=1, criterion='mse'), batch_size=8, total_updates=40,
               updates_per_epoch=20, log_every=5, optimizer=dict(name='AdamW', learning_rate=3e-3))
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict): cfg[k] = {**cfg[k], **v}
        else: cfg[k] = v
    return cfg

def write_config(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path

def run_cli(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    "Run `python -m ml_suite.train ARGS` in a fresh process."
    e = {**os.environ, 'PYTHONUNBUFFERED': '1', **(env or {})}
    return subprocess.run([sys.executable, '-m', 'ml_suite.train', *map(str, args)], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout)

def read_rows(run_dir: Path) -> list:
    return [json.loads(l) for l in (Path(run_dir) / 'metrics.jsonl').read_text().splitlines()]

def all_files(folder: Path) -> set:
    return {p.relative_to(folder) for p in Path(folder).rglob('*')}
