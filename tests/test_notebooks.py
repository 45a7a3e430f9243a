"""Every notebook in nbs/ runs top to bottom (what `nbdev-test` checks), as part of the pytest run.

The module notebooks run in the default selection; the tutorials (nbs/tutorials/, which train several small runs
each) are marked slow: CI runs them with `nbdev-test` and again with `pytest -m slow`."""
from pathlib import Path
import os, pytest
from nbdev import test as nbt
from conftest import ROOT

NBS = [pytest.param(p, id=p.name) for p in sorted((ROOT / 'nbs').glob('*.ipynb'))]
NBS += [pytest.param(p, id=f'tutorials/{p.name}', marks=pytest.mark.slow) for p in sorted((ROOT / 'nbs' / 'tutorials').glob('*.ipynb'))]

@pytest.mark.parametrize('nb', NBS)
def test_notebook_runs(nb, monkeypatch):
    monkeypatch.chdir(nb.parent)
    monkeypatch.syspath_prepend(str(nb.parent))   # as Jupyter does: modules beside the notebook import
    saved = dict(os.environ)   # a lesson's train()/load_config() reads .env files into the environment, as in Jupyter
    try: ok, secs = nbt.test_nb(nb, skip_flags=['slow', 'cuda', 'slurm'], force_flags=[], do_print=False)
    finally: os.environ.clear(); os.environ.update(saved)   # the tests after it see the environment they started with
    rel = nb.relative_to(ROOT / 'nbs')
    assert ok, f"{rel} failed (run `uv run nbdev-test nbs/{rel}` for the traceback)"
