"`compile: true` and `mem_budget`: the dry run, a whole run, and what the budget does to the memory kept for backward."
import json, os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, '-m', 'ml_suite.train', *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow   # a fresh interpreter that loads the compiler (10 s in CI)
def test_the_issues_command_exits_0_and_names_the_run_directory_problem():
    "`ml-suite-train configs/quickstart.yml compile=true --dry-run`, verbatim: exit 0 (it raised AttributeError), nothing written."
    before = sorted(p.name for p in (ROOT / 'configs').iterdir())
    r = _cli('configs/quickstart.yml', 'compile=true', '--dry-run')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'run directory   none usable: ' in r.stdout and 'run_dir=runs/quickstart' in r.stdout, r.stdout
    assert 'forward and backward ran' in r.stdout
    assert sorted(p.name for p in (ROOT / 'configs').iterdir()) == before


@pytest.mark.slow
def test_quickstart_trains_to_the_end_compiled_with_half_the_memory_budget(tmp_path):
    "The quickstart, compiled with `mem_budget: 0.5`, trains all its updates through `ml-suite-train`."
    run = tmp_path / 'run'
    r = _cli('configs/quickstart.yml', f'run_dir={run}', 'compile=true', 'mem_budget=0.5', 'progress=false',
             timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()]
    vals = [x['val_loss'] for x in rows if x.get('val_loss') is not None]
    assert rows[-1]['update'] == 500 and vals[-1] < vals[0] / 2, vals
    log = (run / 'training.log').read_text()
    assert 'finished 500 updates' in log
    # a compiled model is not counted (under a dispatch mode it would run eagerly): said once, no tflops in rows
    assert log.count('FLOPs per update are not counted with compile: true') == 1, log[-3000:]
    assert not any('tflops' in x for x in rows), rows[-1]


PROBE = """
import torch
from ml_suite.train import set_mem_budget
def saved_bytes(budget):
    "Bytes of the tensors that the compiled forward keeps for the backward pass, with `budget`."
    torch._dynamo.reset()
    set_mem_budget(budget)
    torch.manual_seed(0)
    blocks = [torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.GELU(), torch.nn.LayerNorm(128)) for _ in range(3)]
    f = torch.compile(torch.nn.Sequential(*blocks))
    x = torch.randn(256, 128)
    f(x).sum().backward()          # the first call compiles
    kept = []
    def pack(t):
        kept.append(t.untyped_storage().nbytes())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = f(x).sum()
    loss.backward()
    return sum(kept)
print(saved_bytes(1.0), saved_bytes(0.5))
"""


@pytest.mark.slow
def test_mem_budget_below_1_keeps_less_for_backward():
    "Measured on CPU: with `mem_budget` 0.5 the compiled graph saves less activation memory for backward than at 1."
    r = subprocess.run([sys.executable, '-c', PROBE], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    full, half = map(int, r.stdout.split()[-2:])
    assert 0 < half < 0.8 * full, (full, half)
