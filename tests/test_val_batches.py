"Issue 18: `val_batches: N` validates on the first N batches; `validate_at_start: true` writes a row at update 0."
import sys
import pytest, torch
from conftest import tiny_config, write_config, read_rows, run_cli
from ml_suite.train import train

COUNTING = '''
from ml_suite.data import HeatDataset
READS = []   # the indices of the validation samples read, in order

class CountingHeat(HeatDataset):
    "The built-in heat data; every read of a validation sample is appended to READS."
    def __getitem__(self, i):
        if self.split == 'val': READS.append(int(i))
        return super().__getitem__(i)
'''

def test_val_batches_reads_the_first_n_batches_at_every_validation(tmp_path):
    "val_batches=2 with val_batch_size=4: the start validation and the two during training each read samples 0-7."
    (tmp_path / 'counting.py').write_text(COUNTING)
    cfg = tiny_config(dataset=dict(name='counting:CountingHeat', num_samples=64), total_updates=4, updates_per_epoch=2,
                      log_every=2, val_batch_size=4, val_batches=2, validate_at_start=True, progress=False)
    t = train(write_config(tmp_path / 'train.yml', cfg))
    reads = sys.modules['counting'].READS
    assert reads == list(range(8)) * 3, reads
    assert [r['update'] for r in t.history if 'val_loss' in r] == [0, 2, 4]
    log = (tmp_path / 'training.log').read_text()
    assert 'WARNING' not in log, log   # 2 of 16 batches: nothing to warn about
    # more batches asked for than the split has: all are read, and the run says so once
    write_config(tmp_path / 'b' / 'train.yml', {**cfg, 'val_batches': 50, 'total_updates': 2})
    reads.clear()
    train(tmp_path / 'b' / 'train.yml')
    assert reads == list(range(64)) * 2, reads
    log = (tmp_path / 'b' / 'training.log').read_text()
    assert log.count('val_batches (train.yml line') == 1 and 'WARNING' in log, log
    assert 'is 50, but the validation split has 16 batches of 4 per process: every validation reads all 16' in log, log

def test_validate_at_start_writes_a_row_at_update_0_once_and_never_best(tmp_path):
    "A row at update 0 (val_loss, no train_loss, the starting LR) that a resume does not repeat; best.pt is trained."
    # SGD at a large LR makes the trained model worse than the untrained one: a baseline counted as best would show
    cfg = tiny_config(total_updates=2, updates_per_epoch=2, log_every=2, validate_at_start=True, progress=False,
                      max_grad_norm=1.0, optimizer=dict(name='SGD', learning_rate=10.0))
    path = write_config(tmp_path / 'train.yml', cfg)
    r = run_cli(path)
    assert r.returncode == 0, r.stderr
    rows = read_rows(tmp_path)
    assert [row['update'] for row in rows] == [0, 2], rows
    r0 = rows[0]
    assert r0['train_loss'] is None and r0['lr'] == 10.0 and r0['val_loss'] > 0 and r0['eta_s'] is None, r0
    assert 'update 0/2 train_loss n/a lr 10 ' in r.stderr + r.stdout
    assert r0['val_loss'] < rows[1]['val_loss'], rows
    best = torch.load(tmp_path / 'best.pt', weights_only=False)
    assert best['updates'] == 2 and best['best_val_loss'] == rows[1]['val_loss'], best['best_val_loss']
    from ml_suite.train import run_status   # ml-suite-status names the same best as best.pt
    assert (run_status(tmp_path)['best_update'], run_status(tmp_path)['best_val_loss']) == (2, rows[1]['val_loss'])
    # a resume from latest.pt trains on, without a second row at update 0
    r = run_cli(path, 'total_updates=4')
    assert r.returncode == 0, r.stderr
    assert [row['update'] for row in read_rows(tmp_path)] == [0, 2, 4]
    # ml-suite-plot draws a run whose first row is update 0
    from ml_suite.plot import main as plot_main
    assert plot_main([str(tmp_path)]) == 0 and (tmp_path / 'curves.png').stat().st_size > 1000

@pytest.mark.parametrize('value, words', [(0, 'got 0; set it to N >= 1'), (-3, 'got -3; set it to N >= 1'),
                                          (2.5, 'must be an integer, got 2.5'), ('all', "must be an integer, got 'all'")])
def test_a_bad_val_batches_exits_2_naming_the_value(tmp_path, value, words):
    r = run_cli(write_config(tmp_path / 'train.yml', tiny_config(val_batches=value)))
    assert r.returncode == 2 and 'val_batches (train.yml line' in r.stderr and words in r.stderr, r.stderr
    assert not (tmp_path / 'metrics.jsonl').exists()

def test_a_resume_from_update_0_does_not_validate_at_start_again(tmp_path):
    "A run stopped before its first update (its time limit spent) saved update 0; its resume writes no second row 0."
    import time
    cfg = tiny_config(total_updates=4, updates_per_epoch=2, log_every=2, validate_at_start=True, progress=False,
                      time_limit=60)
    path = write_config(tmp_path / 'train.yml', cfg)
    t = train(path, start_time=time.monotonic() - 120)
    assert (t.updates, [r['update'] for r in t.history]) == (0, [0]) and (tmp_path / 'latest.pt').is_file()
    assert train(path).updates == 4
    assert [r['update'] for r in read_rows(tmp_path)] == [0, 2, 4]

@pytest.mark.slow
def test_under_ddp_each_rank_validates_on_its_first_n_batches(tmp_path):
    "Two ranks with val_batches=2 (batches of 4) read samples 0-15 between them: the val_loss of one process with 4."
    from test_distributed import torchrun
    base = tiny_config(total_updates=4, updates_per_epoch=2, log_every=2, val_batch_size=4, validate_at_start=True,
                       progress=False)
    two = write_config(tmp_path / 'two' / 'train.yml', {**base, 'batch_size': 4, 'val_batches': 2})
    r = torchrun('--standalone', '--nproc_per_node=2', '-m', 'ml_suite.train', two, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    one = write_config(tmp_path / 'one' / 'train.yml', {**base, 'batch_size': 8, 'val_batches': 4})
    assert run_cli(one, cwd=tmp_path, env={'OMP_NUM_THREADS': '1'}).returncode == 0
    va = [(row['update'], row['val_loss']) for row in read_rows(tmp_path / 'two') if 'val_loss' in row]
    vb = [(row['update'], row['val_loss']) for row in read_rows(tmp_path / 'one') if 'val_loss' in row]
    assert [u for u, _ in va] == [0, 2, 4] and [v for _, v in va] == pytest.approx([v for _, v in vb], rel=1e-4)
