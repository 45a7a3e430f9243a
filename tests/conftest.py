import json, os, subprocess, sys
from pathlib import Path
import pytest, yaml
# the tiny config and its writer are defined once, in ml_suite.testing (nbs/15_testing.ipynb); the tests import
# them from here as before
from ml_suite.testing import tiny_config, write_config, write_tiny_config, tiny_trainer, LoopInvariants, fit_checked

ROOT = Path(__file__).resolve().parent.parent

def run_cli(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    "Run `python -m ml_suite.train ARGS` in a fresh process."
    e = {**os.environ, 'PYTHONUNBUFFERED': '1', **(env or {})}
    return subprocess.run([sys.executable, '-m', 'ml_suite.train', *map(str, args)], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout)

def read_rows(run_dir: Path) -> list:
    return [json.loads(l) for l in (Path(run_dir) / 'metrics.jsonl').read_text().splitlines()]

def all_files(folder: Path) -> set:
    return {p.relative_to(folder) for p in Path(folder).rglob('*')}
