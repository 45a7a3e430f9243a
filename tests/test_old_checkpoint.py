"A checkpoint written by ml_suite at commit 2e53168 (before issue 17's restructuring) still resumes exactly."
import json, shutil
from pathlib import Path
import torch
from conftest import ROOT, read_rows

# Made once, by tools/make_old_checkpoint.py on a checkout of 2e53168 (its docstring says how): a 12-update tiny run
# stopped by SIGTERM after update 7 (run/), the weights that 2e53168 reached resuming it to the end (final.pt), and
# that resumed run's updates, samples and metrics rows (final.json). Never remake it with newer code.
FIXTURE = ROOT / 'tests' / 'fixtures' / 'ckpt_2e53168'

def test_old_checkpoint_resumes_exactly(tmp_path):
    from ml_suite.train import train
    run = Path(shutil.copytree(FIXTURE / 'run', tmp_path / 'run'))
    want = json.loads((FIXTURE / 'final.json').read_text())
    assert torch.load(run / 'latest.pt', weights_only=False)['updates'] == want['stop_at']
    # the fixture was made with one thread (OMP_NUM_THREADS=1): a convolution's sums depend on how many threads add
    # them, so the resume runs on one thread too, whatever the test process has
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try: t = train(run / 'train.yml')
    finally: torch.set_num_threads(threads)
    assert t.finished and t.updates == want['updates'] and t.samples == want['samples']
    final = torch.load(FIXTURE / 'final.pt', weights_only=True)
    got = t.raw_model.state_dict()
    assert got.keys() == final.keys()
    for k, v in final.items():
        assert torch.equal(got[k].cpu(), v), f"{k} differs from the weights 2e53168 reached"
    # the rows before the stop are kept, and the resumed ones continue them
    rows = [{k: r[k] for k in ('update', 'samples')} for r in read_rows(run)]
    assert rows == want['rows']
    assert torch.load(run / 'latest.pt', weights_only=False)['updates'] == want['updates']
    log = (run / 'training.log').read_text()
    assert f"resumed from {run / 'latest.pt'} at update {want['stop_at']}/" in log
    # written before optimizer.no_decay: one parameter group, said in the log and recorded, so later resumes agree
    assert len(t.optimizer.param_groups) == 1
    assert f"{run / 'latest.pt'} was written before optimizer.no_decay existed" in log
    assert torch.load(run / 'latest.pt', weights_only=False)['config']['optimizer']['no_decay'] == []
    t = train(run / 'train.yml', ['total_updates=13'])
    assert t.updates == 13 and len(t.optimizer.param_groups) == 1
    assert "resuming with the checkpoint's optimizer.no_decay [] (this config leaves it at its default" in \
        (run / 'training.log').read_text()
