"ml_suite.testing: its tiny trainer trains, and its invariant checker passes a real fit and fails a broken one."
import pytest
from conftest import tiny_trainer, LoopInvariants, fit_checked, tiny_config, read_rows

def test_checker_passes_a_real_fit_with_files(tmp_path):
    warm = dict(first_stage=dict(name='LinearLR', start_factor=0.1, num_updates=5))
    t = tiny_trainer(tmp_path / 'run', total_updates=12, updates_per_epoch=6, log_every=4, grad_accum_steps=2,
                     lr_scheduler=warm, progress=False)
    with LoopInvariants(t) as check: t.fit()
    assert check.steps == 12 and t.samples == 12 * 8 * 2 and 'train_step' not in vars(t)
    assert [r['update'] for r in read_rows(tmp_path / 'run')] == [4, 6, 8, 12]

def test_checker_fails_a_step_that_skips_a_sample():
    t = tiny_trainer(total_updates=12, updates_per_epoch=6, progress=False)
    step = t.train_step
    def lossy_step(batches):
        step(batches)
        if t.updates == 3: t.samples -= 1
    t.train_step = lossy_step
    with pytest.raises(AssertionError, match='at update 3: train_step added 7 samples'): fit_checked(t)

def test_checker_fails_a_missing_row_and_a_stale_checkpoint(tmp_path):
    t = tiny_trainer(tmp_path / 'run', total_updates=6, updates_per_epoch=6, log_every=3, progress=False)
    check = LoopInvariants(t)
    check.log_every = 2   # the trainer logs every 3 updates; the checker expects a row after update 2
    with pytest.raises(AssertionError, match=r'0 rows \(at \[\]\) after update 2; want 1'):
        with check: t.fit()
    t = tiny_trainer(tmp_path / 'other', total_updates=6, updates_per_epoch=6, log_every=3, progress=False)
    check = LoopInvariants(t)
    with check: t.fit()
    t.total_updates, t.updates = 8, 7   # counters that moved past the last checkpoint (a run not finished yet)
    with pytest.raises(AssertionError, match='latest.pt holds update 6, but the trainer has done 7'): check.check_end()

def test_tiny_config_is_a_fresh_copy():
    a = tiny_config(optimizer=dict(learning_rate=0.1))
    a['dataset']['size'] = 99
    assert tiny_config()['dataset']['size'] == 16 and a['optimizer'] == dict(name='AdamW', learning_rate=0.1)

def test_testing_imports_neither_torch_nor_pytest():
    import subprocess, sys
    code = "import sys, ml_suite.testing; print(sorted({'torch', 'pytest'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '[]'

def test_checker_takes_the_cadence_of_a_trainer_without_config():
    import torch
    from ml_suite.testing import trainer_for
    data = iter(lambda: (torch.ones(4, 1), torch.zeros(4, 1)), None)
    t = fit_checked(trainer_for(torch.nn.Linear(1, 1), data, total_updates=12, updates_per_epoch=6, log_every=4))
    assert [r['update'] for r in t.history] == [4, 6, 8, 12] and t.samples == 48
    t = trainer_for(torch.nn.Linear(1, 1), data, total_updates=6, log_every=3)
    check = LoopInvariants(t)
    # the checker took every 3 updates from the trainer; the trainer now logs every 2
    t.log_every = 2
    with pytest.raises(AssertionError, match=r'1 rows \(at \[2\]\) after update 2; want 0'):
        with check: t.fit()

def test_temp_run_config_is_a_new_folder_each_time(tmp_path, monkeypatch):
    from pathlib import Path
    from ml_suite.testing import temp_run_config
    monkeypatch.chdir(tmp_path)
    a, b = temp_run_config(total_updates=6), temp_run_config()
    assert a['run_dir'] != b['run_dir'] and Path(a['run_dir']).is_absolute() and not Path(a['run_dir']).exists()
    assert a['total_updates'] == 6 and not Path(a['run_dir']).is_relative_to(tmp_path)
