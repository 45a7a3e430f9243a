"""Issue 9, bad data and numerics: a dataset or model that does not fit gives one paragraph naming the culprit, and a
NaN/Inf loss is skipped, counted, and (K in a row) stops the run with the last good weights and exit code 5. Real
training runs on the tiny config, in-process through `train()` and through the CLI for exit codes."""
import math, os, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch
from conftest import tiny_config, write_config, run_cli, read_rows
from ml_suite.train import train, dry_run, EXIT_NONFINITE
from ml_suite.data import DataError
from ml_suite.trainer import ModelError, NonFiniteError
from ml_suite.nonfinite import weights_finite

FAULTS = '''
import math, os, torch
from ml_suite.data import HeatDataset

class RaisesAt3(HeatDataset):
    def __getitem__(self, i):
        if i == 3: raise ValueError('corrupt record 3')
        return super().__getitem__(i)

class Ragged(HeatDataset):       # sample 5 is one pixel narrower
    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return (x[..., :-1], y[..., :-1]) if i == 5 else (x, y)

class Float64(HeatDataset):
    def __getitem__(self, i): x, y = super().__getitem__(i); return x.double(), y.double()

class Dicts(HeatDataset):
    def __getitem__(self, i): x, y = super().__getitem__(i); return {'x': x, 'y': y}

class DictsLater(HeatDataset):   # pairs for the first `LATE` reads of this instance (the first batch among them), then dicts
    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        self.reads = getattr(self, 'reads', 0) + 1
        return {'x': x, 'y': y} if self.reads > int(os.environ.get('LATE', '12')) else (x, y)

class RaisesLater(HeatDataset):  # raises at the 20th read of this instance: a later batch, not the first
    def __getitem__(self, i):
        self.reads = getattr(self, 'reads', 0) + 1
        if self.reads == 20: raise OSError(f'disk hiccup at {i}')
        return super().__getitem__(i)

class Triples(HeatDataset):
    def __getitem__(self, i): x, y = super().__getitem__(i); return x, y, i

def _bad(n, var):
    spec = os.environ.get(var, '')
    return any((n >= int(p[:-1])) if p.endswith('-') else n == int(p) for p in spec.split(',') if p)

class NaNLoss(torch.nn.MSELoss):
    "MSE; training call number n (= update n) is NaN if n is in $BAD_LOSS ('7,8' or '12-': from 12 on)."
    def forward(self, p, t):
        loss = super().forward(p, t)
        if not torch.is_grad_enabled(): return loss          # validation
        self.calls = getattr(self, 'calls', 0) + 1
        return loss * math.nan if _bad(self.calls, 'BAD_LOSS') else loss

class NaNGradLoss(torch.nn.MSELoss):
    "MSE; at the updates in $BAD_GRAD the loss is finite but its gradient is NaN (the torch.where trap)."
    def forward(self, p, t):
        loss = super().forward(p, t)
        if not torch.is_grad_enabled(): return loss
        self.calls = getattr(self, 'calls', 0) + 1
        if not _bad(self.calls, 'BAD_GRAD'): return loss
        return torch.where(torch.tensor(True), loss, torch.sqrt(-(loss + 1)))
'''

@pytest.fixture(scope='module')
def faults(tmp_path_factory):
    d = tmp_path_factory.mktemp('faults')
    (d / 'ml_faults.py').write_text(FAULTS)
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))

def cfg(tmp_path, **over):
    return tiny_config(run_dir=str(tmp_path / 'run'), progress=False, **over)

def error(exc, fn, *args):
    with pytest.raises(exc) as e: fn(*args)
    return str(e.value)

def finite(sd): return all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())

# --- data ---------------------------------------------------------------------------------------------------------

def test_dataset_raising_at_index_3_is_named_in_a_worker_through_the_cli(tmp_path, faults):
    c = cfg(tmp_path, dataset=dict(name='ml_faults:RaisesAt3', normalize=False), num_workers=2)
    r = run_cli(write_config(tmp_path / 'train.yml', c), cwd=tmp_path, env={'PYTHONPATH': str(faults)})
    assert r.returncode == 1, r.stderr
    err = r.stderr.splitlines()[-1]
    assert err.startswith('ml-suite-train: error: RaisesAt3 (split \'train\') failed to give sample 3'), err
    assert 'ValueError: corrupt record 3' in err and 'in DataLoader worker process' in err

def test_dataset_raising_while_statistics_are_computed_writes_nothing(tmp_path, faults):
    msg = error(DataError, train, cfg(tmp_path, dataset=dict(name='ml_faults:RaisesAt3')))   # normalize: reads all samples first
    assert "RaisesAt3 (split 'train') failed to give sample 3" in msg and 'corrupt record 3' in msg
    assert not (tmp_path / 'run').exists()

@pytest.mark.parametrize('name, expect', [('Dicts', "sample 0 is a dict with keys ['x', 'y']; a sample must be a pair (input, target)"),
                                          ('Triples', 'sample 0 is a tuple of 3 items; a sample must be a pair')])
def test_a_sample_that_is_not_a_pair(tmp_path, faults, name, expect):
    msg = error(DataError, train, cfg(tmp_path, dataset=dict(name=f'ml_faults:{name}')))
    assert f"{name} (split 'train') {expect}" in msg, msg

def test_samples_of_different_shapes_name_the_index_and_both_shapes(tmp_path, faults):
    msg = error(DataError, train, cfg(tmp_path, dataset=dict(name='ml_faults:Ragged', normalize=False)))
    assert "Ragged (split 'train')" in msg and 'sample 5 has' in msg, msg
    assert '(1, 16, 15) float32' in msg and '(1, 16, 16) float32' in msg

def test_float64_inputs_name_both_dtypes_and_the_layer_in_training_and_dry_run(tmp_path, faults):
    c = cfg(tmp_path, dataset=dict(name='ml_faults:Float64'))
    for fn in (train, dry_run):
        msg = error(ModelError, fn, c)
        assert msg.startswith('UNet failed on a batch of inputs of shape (8, 1, 16, 16) float64 in layer'), msg
        assert "(Conv2d" in msg and "inputs are float64 but UNet's parameters are float32" in msg

@pytest.mark.parametrize('late', ['12', '17'])   # a batch of pairs and dicts; a batch of dicts only
def test_a_sample_that_is_not_a_pair_in_a_later_batch_is_named(tmp_path, faults, monkeypatch, late):
    "The first batch is checked sample by sample; a later batch is checked when stacking it fails or gives no pair."
    monkeypatch.setenv('LATE', late)
    msg = error(DataError, train, cfg(tmp_path, dataset=dict(name='ml_faults:DictsLater', normalize=False)))
    assert "DictsLater (split 'train') sample " in msg, msg
    assert "is a dict with keys ['x', 'y']; a sample must be a pair (input, target)" in msg, msg

def test_a_dataset_raising_in_a_later_batch_names_the_index(tmp_path, faults):
    msg = error(DataError, train, cfg(tmp_path, dataset=dict(name='ml_faults:RaisesLater', normalize=False)))
    assert "RaisesLater (split 'train') failed to give sample " in msg and 'OSError: disk hiccup at ' in msg, msg
    i = msg.split('failed to give sample ')[1].split(':')[0]
    assert f'RaisesLater.__getitem__({i}) raised OSError: disk hiccup at {i}' in msg, msg   # the index that raised

def test_max_consecutive_is_refused_before_torch_is_imported(tmp_path):
    path = write_config(tmp_path / 'train.yml', cfg(tmp_path, nonfinite=dict(max_consecutive=0)))
    code = ("import sys\nfrom ml_suite.config import load_config\nfrom ml_suite.core import ConfigError\n"
            f"try: load_config({str(path)!r}, names=False)\nexcept ConfigError as e: print(e)\n"
            "print('torch imported:', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120).stdout
    assert 'nonfinite.max_consecutive (train.yml line ' in out, out
    assert ') must be >= 1, got 0; use policy: off to turn the check off.' in out, out
    assert 'torch imported: False' in out

# --- model --------------------------------------------------------------------------------------------------------

def test_model_with_the_wrong_channel_count_names_model_input_and_layer(tmp_path):
    msg = error(ModelError, train, cfg(tmp_path, model=dict(in_channels=3)))
    assert msg.startswith("UNet failed on a batch of inputs of shape (8, 1, 16, 16) float32 in layer 'stem."), msg
    assert '(Conv2d, given input of shape (8, 1, 16, 16))' in msg and 'RuntimeError' in msg
    assert not (tmp_path / 'run' / 'latest.pt').exists()

def test_predictions_that_do_not_match_the_targets(tmp_path):
    msg = error(ModelError, dry_run, cfg(tmp_path, model=dict(out_channels=2)))
    assert 'UNet returns predictions of shape (8, 2, 16, 16) float32 but the targets have shape (8, 1, 16, 16) float32' in msg

# --- NaN and Inf --------------------------------------------------------------------------------------------------

def test_nonfinite_updates_are_skipped_and_counted(tmp_path, faults, monkeypatch):
    monkeypatch.setenv('BAD_LOSS', '7,8,23')
    t = train(cfg(tmp_path, model=dict(criterion='ml_faults:NaNLoss'), total_updates=30))
    assert t.updates == 30 and t.skipped_nonfinite == 3
    rows = read_rows(tmp_path / 'run')
    assert [(r['update'], r['skipped_nonfinite']) for r in rows] == [(5, 0), (10, 2), (15, 2), (20, 2), (25, 3), (30, 3)]
    assert all(math.isfinite(r['train_loss']) for r in rows) and all(math.isfinite(r['val_loss']) for r in rows if 'val_loss' in r)
    ck = torch.load(tmp_path / 'run' / 'latest.pt', weights_only=True)
    assert ck['nonfinite'] == {'skipped': 3, 'in_a_row': 0} and finite(ck['model'])

def test_k_in_a_row_stops_with_the_last_good_weights_and_exit_code_5(tmp_path, faults):
    c = cfg(tmp_path, model=dict(criterion='ml_faults:NaNLoss'), updates_per_epoch=10, total_updates=20, log_every=2,
            nonfinite=dict(max_consecutive=4))
    path = write_config(tmp_path / 'train.yml', c)
    r = run_cli(path, cwd=tmp_path, env={'PYTHONPATH': str(faults), 'BAD_LOSS': '11-'})   # every update from 11 on
    assert r.returncode == EXIT_NONFINITE == 5, r.stderr
    assert 'stopping at update 14: the last 4 update(s) had a non-finite loss' in r.stdout + r.stderr
    run = tmp_path / 'run'
    ck, best = (torch.load(run / f, weights_only=True) for f in ('latest.pt', 'best.pt'))
    assert ck['updates'] == 14 and ck['nonfinite'] == {'skipped': 4, 'in_a_row': 4} and finite(ck['model'])
    assert best['updates'] == 10 and math.isfinite(best['best_val_loss'])
    for k, v in best['model'].items(): assert torch.equal(ck['model'][k], v), k   # update 10's weights: the last good ones
    assert [(r['update'], r['skipped_nonfinite']) for r in read_rows(run)][-3:] == [(10, 0), (12, 2), (14, 4)]
    t = train(path)                                    # the cause gone (BAD_LOSS unset here): the rerun continues
    assert t.updates == 20 and t.skipped_nonfinite == 4 and t.stop_action is None

def test_nan_gradient_behind_a_finite_loss(tmp_path, faults, monkeypatch):
    "Without max_grad_norm the NaN weights are refused at the next save (exit code 5); with it, the update is skipped."
    monkeypatch.setenv('BAD_GRAD', '12')
    with pytest.raises(NonFiniteError) as e:
        train(cfg(tmp_path, model=dict(criterion='ml_faults:NaNGradLoss'), updates_per_epoch=10, total_updates=20))
    assert "the model's weights hold NaN or Inf at update 20, so they are not saved" in str(e.value) and e.value.exit_code == 5
    ck = torch.load(tmp_path / 'run' / 'latest.pt', weights_only=True)
    assert ck['updates'] == 10 and finite(ck['model'])
    t = train(cfg(tmp_path / 'clipped', model=dict(criterion='ml_faults:NaNGradLoss'), total_updates=20, max_grad_norm=100.0))
    assert t.updates == 20 and t.skipped_nonfinite == 1 and weights_finite(t.raw_model)

def test_a_nan_validation_never_becomes_best(tmp_path, faults, monkeypatch):
    "With the check off, a NaN update is applied and the weights turn NaN; best.pt stays at the last finite validation."
    monkeypatch.setenv('BAD_LOSS', '12')
    t = train(cfg(tmp_path, model=dict(criterion='ml_faults:NaNLoss'), updates_per_epoch=10, total_updates=20,
                  nonfinite=dict(policy='off')))
    vals = [r['val_loss'] for r in read_rows(tmp_path / 'run') if 'val_loss' in r]
    assert math.isfinite(vals[0]) and vals[1] is None and t.skipped_nonfinite == 0   # NaN is written as null
    best = torch.load(tmp_path / 'run' / 'best.pt', weights_only=True)
    assert best['updates'] == 10 and best['best_val_loss'] == vals[0] and finite(best['model'])

def test_nonfinite_config_is_checked(tmp_path):
    from ml_suite.core import ConfigError
    assert "nonfinite.policy (dict config) must be one of 'skip', 'stop', 'off', got 'skp'" in error(
        ConfigError, train, cfg(tmp_path, nonfinite=dict(policy='skp')))
    assert 'nonfinite.max_consecutive (dict config) must be >= 1, got 0' in error(
        ConfigError, dry_run, cfg(tmp_path, nonfinite=dict(max_consecutive=0)))
