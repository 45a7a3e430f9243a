"Issue 18: `early_stopping` ends a run at the validation it should, with exit code 0, and a resumed counter agrees."
import math
import pytest, torch
from ml_suite.data import BatchStream, eval_loader
from ml_suite.evaluator import Evaluator
from ml_suite.testing import trainer_for
from ml_suite.trainer import TrainerParts
from ml_suite.stopping import StopAction
from ml_suite.early_stopping import EarlyStopping

def linear_trainer(run_dir, total_updates, callbacks, lr=0.05):
    "A linear model on noisy linear data, validated every 2 updates: its val_loss falls, then wanders at the noise."
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    y = x @ torch.tensor([[1.], [2.], [-1.], [0.5]]) + 0.5 * torch.randn(96, 1, generator=g)
    train = torch.utils.data.TensorDataset(x[:64], y[:64])
    val = torch.utils.data.TensorDataset(x[64:], y[64:])
    torch.manual_seed(0)
    run_dir.mkdir(parents=True, exist_ok=True)
    parts = TrainerParts.in_run_dir(run_dir, callbacks=callbacks)
    t = trainer_for(torch.nn.Linear(4, 1), BatchStream(train, 8, seed=0), lr=lr, parts=parts,
                    total_updates=total_updates, updates_per_epoch=2, log_every=2)
    t.val_data = eval_loader(val, 32)
    t.evaluator = Evaluator(torch.nn.MSELoss())
    return t

def expected_stop(vals:dict, patience:int, min_delta:float)->tuple:
    "`(update the rule stops at or None, best, its update)` from `{update: val_loss}`, counted apart from the callback."
    best, best_u, bad = math.inf, None, 0
    for u, v in sorted(vals.items()):
        if v < best - min_delta: best, best_u, bad = v, u, 0
        else: bad += 1
        if bad == patience: return u, best, best_u
    return None, best, best_u

def val_losses(t)->dict: return {r['update']: r['val_loss'] for r in t.history if 'val_loss' in r}

def test_early_stopping_stops_at_the_validation_it_should(tmp_path):
    "The run ends at the validation the rule names in the history of a run without the callback; exit 0, ended."
    ref = linear_trainer(tmp_path / 'ref', 80, []).fit()
    want, best, best_u = expected_stop(val_losses(ref), patience=3, min_delta=1e-3)
    assert want is not None and 10 < want < 80, val_losses(ref)   # it improves for a while, then stops improving
    es = EarlyStopping(patience=3, min_delta=1e-3)
    t = linear_trainer(tmp_path / 'es', 80, [es]).fit()
    assert t.updates == want, (t.updates, want, val_losses(t))
    assert val_losses(t) == {u: v for u, v in val_losses(ref).items() if u <= want}
    assert es.state_dict() == {'best': best, 'best_update': best_u, 'bad': 3, 'stopped': True}
    reason = (f"early_stopping: val_loss did not improve by more than 0.001 for 3 validations "
              f"(best {es.best:.6g} at update {best_u})")
    assert t.ended == reason and t.finished and t.stop_action == StopAction.CALLBACK, (t.ended, t.stop_action)
    assert t.stopper.exit_code == 0 and t.history[-1]['update'] == want and t.history[-1]['stopped'] == reason
    sd = torch.load(tmp_path / 'es' / 'latest.pt', weights_only=False)
    assert sd['updates'] == want and sd['ended'] == reason
    assert list(sd['callbacks'].values()) == [es.state_dict()]

def test_a_resumed_patience_counter_stops_at_the_same_update(tmp_path):
    "A run cut partway with the counter above 0, resumed from latest.pt, stops where an uninterrupted one does."
    whole = linear_trainer(tmp_path / 'whole', 80, [EarlyStopping(patience=3, min_delta=1e-3)]).fit()
    vals = val_losses(whole)
    # the first validation after which the counter is 1 or 2: the run is cut there
    cut = next(u for u in sorted(vals) if expected_stop({k: v for k, v in vals.items() if k <= u}, 1, 1e-3)[0] == u)
    assert cut < whole.updates, (cut, whole.updates)
    first = linear_trainer(tmp_path / 'cut', cut, [EarlyStopping(patience=3, min_delta=1e-3)]).fit()
    assert first.updates == cut and first.ended is None and first.callbacks[0].bad >= 1
    resumed = linear_trainer(tmp_path / 'cut', 80, [EarlyStopping(patience=3, min_delta=1e-3)])
    resumed.load_state_dict(torch.load(tmp_path / 'cut' / 'latest.pt', weights_only=False))
    assert resumed.callbacks[0].state_dict() == first.callbacks[0].state_dict()
    resumed.fit()
    assert resumed.updates == whole.updates and resumed.ended == whole.ended
    assert resumed.callbacks[0].state_dict() == whole.callbacks[0].state_dict()

def test_a_monitor_that_is_not_a_metric_stops_the_run_and_names_it(tmp_path):
    "monitor: val_acc in a run that validates val_loss only: a CallbackError naming the monitor and the metrics."
    from ml_suite.core import RunError
    t = linear_trainer(tmp_path, 10, [EarlyStopping(monitor='val_acc')])
    with pytest.raises(RunError, match=r"early_stopping monitors 'val_acc', but the validation metrics are val_loss"):
        t.fit()

def test_the_builtin_table_names_the_signature():
    "BUILTIN_ARGS['early_stopping'] (read by the config check) is EarlyStopping's signature; bad values: exit 2."
    import inspect
    from ml_suite.callbacks import BUILTIN_ARGS, BUILTIN_CALLBACKS
    from ml_suite.core import ConfigError
    sig = {k: p.default for k, p in inspect.signature(EarlyStopping).parameters.items()}
    assert BUILTIN_ARGS['early_stopping'] == sig and BUILTIN_CALLBACKS['early_stopping'].endswith(':EarlyStopping')
    with pytest.raises(ConfigError, match="mode is 'lowest'; it must be 'min'"): EarlyStopping(mode='lowest')

def test_train_with_early_stopping_ends_and_a_rerun_says_it_has_finished(tmp_path):
    "From a config: ended at update 20 of 80 (patience 1, nothing beats the best by 1e9), exit 0; a rerun: finished."
    from conftest import tiny_config, write_config
    from ml_suite.train import _main, run_status
    cfg = tiny_config(total_updates=80, updates_per_epoch=10, log_every=10, progress=False,
                      callbacks=[{'name': 'early_stopping', 'patience': 1, 'min_delta': 1e9}])
    path = write_config(tmp_path / 'train.yml', cfg)
    assert _main([str(path)]) == 0
    reason = "early_stopping: val_loss did not improve by more than 1000000000.0 for 1 validations (best "
    st = run_status(tmp_path)
    assert st['ended'].startswith(reason) and st['ended'].endswith(' at update 10)') and st['resume_update'] == 20, st
    log = (tmp_path / 'training.log').read_text()
    assert f"ending the run at update 20/80 ({reason}" in log, log
    rows = (tmp_path / 'metrics.jsonl').read_text()
    assert _main([str(path)]) == 0
    last = (tmp_path / 'training.log').read_text().splitlines()[-1]
    assert f'the run has finished: a callback ended it at update 20: {reason}' in last, last
    assert (tmp_path / 'metrics.jsonl').read_text() == rows
