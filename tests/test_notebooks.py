"Every notebook in nbs/ runs top to bottom (what `nbdev-test` checks), as part of the pytest run."
from pathlib import Path
import os, pytest
from nbdev import test as nbt
from conftest import ROOT

NBS = sorted((ROOT / 'nbs').glob('*.ipynb'))

@pytest.mark.parametrize('nb', NBS, ids=[p.name for p in NBS])
def test_notebook_runs(nb, monkeypatch):
    monkeypatch.chdir(nb.parent)
    ok, secs = nbt.test_nb(nb, skip_flags=['slow', 'cuda'], force_flags=[], do_print=False)
    assert ok, f"{nb.name} failed (run `uv run nbdev-test nbs/{nb.name}` for the traceback)"
