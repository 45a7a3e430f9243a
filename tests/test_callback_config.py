"Issue 18: `model.step` and `callbacks` in the config, checked when it loads (most of it before torch is imported)."
import subprocess, sys
import pytest
from conftest import tiny_config, write_config, run_cli
from ml_suite.config import load_config
from ml_suite.core import ConfigError

NO_TORCH = '''
import sys
from ml_suite.config import load_config
from ml_suite.core import ConfigError
try: load_config(sys.argv[1], names=False)
except ConfigError as e: print(e)
assert 'torch' not in sys.modules, 'load_config(names=False) imported torch'
'''

def stepped(step:str, **over)->dict:
    "`tiny_config(**over)` with `model.step` and without the criterion that `tiny_config` writes."
    cfg = tiny_config(model={'step': step}, **over)
    del cfg['model']['criterion']
    return cfg

def _error(tmp_path, **over)->str:
    "The message `load_config` raises for `tiny_config(**over)`, written to train.yml (names not resolved)."
    path = write_config(tmp_path / 'train.yml', tiny_config(**over))
    with pytest.raises(ConfigError) as e: load_config(path, names=False)
    return str(e.value)

def test_an_unknown_callback_keyword_exits_2_with_a_suggestion_before_torch(tmp_path):
    "A misspelt early_stopping argument: exit 2, the callback, the key, its line, the accepted keys, a close match."
    cbs = [{'name': 'ema', 'decay': 0.99}, {'name': 'early_stopping', 'patiense': 3}]
    path = write_config(tmp_path / 'train.yml', tiny_config(callbacks=cbs))
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if 'patiense' in l)
    r = run_cli(path)
    assert r.returncode == 2, r.stderr
    words = (f"unknown key 'patiense' in callback 'early_stopping' (train.yml line {line}); did you mean 'patience'? "
             f"early_stopping accepts: monitor, mode, patience, min_delta")
    assert words in r.stderr and 'Traceback' not in r.stderr, r.stderr
    # the same check runs before torch is imported
    r = subprocess.run([sys.executable, '-c', NO_TORCH, str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and words in r.stdout, r.stdout + r.stderr
    assert not (tmp_path / 'metrics.jsonl').exists()

def test_an_unknown_callback_name_and_a_bad_item(tmp_path):
    msg = _error(tmp_path, callbacks=[{'name': 'early_stoping'}])
    assert "unknown callback 'early_stoping' in callbacks[0] (train.yml line" in msg, msg
    assert "did you mean 'early_stopping'?" in msg, msg
    assert 'is a mapping without a name (its keys: patience)' in _error(tmp_path, callbacks=[{'patience': 3}])
    assert "callbacks[0] (train.yml line" in _error(tmp_path, callbacks=['ema'])
    msg = _error(tmp_path, callbacks=[{'name': 'ema', 'decay': 1.5}])
    assert 'callbacks[0].decay (train.yml line' in msg and 'of ema must be in (0, 1)' in msg, msg
    msg = _error(tmp_path, callbacks=[{'name': 'ema'}, {'name': 'ema'}])
    assert 'callbacks[1] (train.yml line' in msg and 'is a second ema' in msg, msg

def test_a_callback_class_of_your_own_is_checked_like_a_model(tmp_path):
    (tmp_path / 'cfgtest_callbacks.py').write_text('class Counter:\n    def __init__(self, every:int=1): pass\n')
    msg = _error(tmp_path, callbacks=[{'name': 'cfgtest_callbacks:Counter', 'evry': 2}])
    assert "unknown key 'evry' in callback 'cfgtest_callbacks:Counter' (train.yml line" in msg, msg
    assert "did you mean 'every'? Counter accepts: every" in msg, msg
    path = write_config(tmp_path / 'ok.yml', tiny_config(callbacks=[{'name': 'cfgtest_callbacks:Counter', 'every': '2'}]))
    assert load_config(path, names=False)[0].callbacks == [{'name': 'cfgtest_callbacks:Counter', 'every': 2}]

def test_a_bad_step_path(tmp_path):
    (tmp_path / 'steps.py').write_text('def my_step(model, batch): return model(batch).sum()\nLIMIT = 3\n')
    msg = _error(tmp_path, model={'step': 'nosuchmodule:my_step'})
    assert "model.step (train.yml line" in msg and "module 'nosuchmodule' cannot be imported" in msg, msg
    assert 'which is a int, not a class or function' in _error(tmp_path, model={'step': 'steps:LIMIT'})
    msg = _error(tmp_path, model={'step': 'model_los'})
    assert "model.step (train.yml line" in msg and "did you mean 'model_loss'?" in msg, msg
    path = write_config(tmp_path / 'ok.yml', stepped('steps:my_step'))
    assert load_config(path, names=False)[0].model.step == 'steps:my_step'

def test_a_criterion_with_a_step_that_computes_its_loss(tmp_path):
    "A criterion written beside model_loss is refused; left out (its default), it is fine."
    msg = _error(tmp_path, model={'step': 'model_loss', 'criterion': 'mse'})
    assert "model.criterion (train.yml line" in msg and "which computes the loss itself" in msg, msg
    assert load_config(write_config(tmp_path / 'ok.yml', stepped('model_loss')), names=False)[0].metrics == []
    # a command-line override counts as written
    with pytest.raises(ConfigError, match="command-line override 'model.criterion=mae'"):
        load_config(tmp_path / 'ok.yml', ['model.criterion=mae'], names=False)

def test_model_loss_with_metrics(tmp_path):
    path = write_config(tmp_path / 'train.yml', stepped('model_loss', metrics=['mae']))
    with pytest.raises(ConfigError) as e: load_config(path, names=False)
    assert "metrics (train.yml line" in str(e.value) and "the model returns only its loss" in str(e.value), e.value
    assert "'pred'" in str(e.value) and "'target'" in str(e.value)

def test_a_monitor_that_validation_does_not_write(tmp_path):
    msg = _error(tmp_path, metrics=['mae'], callbacks=[{'name': 'early_stopping', 'monitor': 'val_rmse'}])
    assert "callbacks[0].monitor (train.yml line" in msg and "'val_rmse', which validation does not write" in msg, msg
    assert "It writes val_loss, val_mae" in msg, msg
    path = write_config(tmp_path / 'ok.yml', tiny_config(metrics=['mae'], callbacks=[
        {'name': 'early_stopping', 'monitor': 'val_mae', 'mode': 'min', 'patience': 2}]))
    assert load_config(path, names=False)[0].callbacks[0]['monitor'] == 'val_mae'
    msg = _error(tmp_path, callbacks=[{'name': 'early_stopping', 'patience': 0}])
    assert 'callbacks[0].patience (train.yml line' in msg and 'must be >= 1' in msg, msg

STOPPER = '''
from ml_suite.callbacks import Callback

class StopAt(Callback):
    "Asks the run to stop after the validation at update `at`, with `code`."
    def __init__(self, at:int=10, code:int=0): self.at, self.code = at, code
    def after_validate(self, trainer, metrics):
        if trainer.updates >= self.at: trainer.request_stop(f"stop asked at update {trainer.updates}", self.code)
'''

def test_a_run_a_callback_ended_exits_0_and_a_rerun_says_it_has_finished(tmp_path):
    "Ended at the validation of update 10 of 40: exit 0; the rerun trains nothing, exit 0; the status says why."
    from ml_suite.train import run_status, format_status, _main   # the command line's code, in this process
    (tmp_path / 'stopper.py').write_text(STOPPER)
    cfg = tiny_config(total_updates=40, updates_per_epoch=10, log_every=10, progress=False,
                      callbacks=[{'name': 'stopper:StopAt', 'at': 10}])
    path = write_config(tmp_path / 'train.yml', cfg)
    assert _main([str(path)]) == 0
    st = run_status(tmp_path)
    assert (st['ended'], st['resume_update']) == ('stop asked at update 10', 10), st
    assert 'stopped early at update 10: stop asked at update 10' in format_status(st)
    rows = (tmp_path / 'metrics.jsonl').read_text()
    assert _main([str(path), 'total_updates=80']) == 0
    log = (tmp_path / 'training.log').read_text().splitlines()
    assert 'the run has finished: a callback ended it at update 10: stop asked at update 10' in log[-1], log[-3:]
    assert (tmp_path / 'metrics.jsonl').read_text() == rows
    # another exit code: the process exits with it, and the run has not ended
    b = tmp_path / 'b'
    write_config(b / 'train.yml', {**cfg, 'callbacks': [{'name': 'stopper:StopAt', 'at': 10, 'code': 7}]})
    (b / 'stopper.py').write_text(STOPPER)
    assert _main([str(b / 'train.yml')]) == 7
    assert (run_status(b)['ended'], run_status(b)['resume_update']) == (None, 10)

LM = '''
import torch
from ml_suite.steps import Count

class Chars(torch.utils.data.Dataset):
    "Windows of a repeating sequence as (idx, targets): the next character is the current one plus one."
    def __init__(self, split:str='train', n:int=64, block:int=8):
        self.seq, self.n, self.block = torch.arange(n + block + 1) % 16, n, block
    def __len__(self): return self.n
    def __getitem__(self, i): return self.seq[i:i + self.block], self.seq[i + 1:i + self.block + 1]

class CharLM(torch.nn.Module):
    "nanoGPT's shape: forward(idx, targets) -> (logits, loss)."
    def __init__(self, vocab:int=16, width:int=16):
        super().__init__()
        self.emb, self.head = torch.nn.Embedding(vocab, width), torch.nn.Linear(width, vocab)
    def forward(self, idx, targets):
        logits = self.head(self.emb(idx))
        return logits, torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())

def lm_step(model, batch):
    logits, loss = model(*batch)
    return loss, {'ppl': loss.exp().detach(), 'tokens': Count(batch[0].numel())}
'''

def test_the_step_from_the_config_trains_and_validates(tmp_path):
    "model_loss and a step of your own, from the config alone: val_loss is the step's; its scalars land in the rows."
    from ml_suite.train import train, dry_run
    for d in ('a', 'b'): write_config(tmp_path / d / 'lm.py', {}).write_text(LM)
    cfg = dict(dataset={'name': 'lm:Chars'}, model={'type': 'lm:CharLM', 'step': 'model_loss'}, batch_size=8,
               total_updates=20, updates_per_epoch=10, log_every=10, progress=False,
               optimizer={'name': 'AdamW', 'learning_rate': 3e-2})
    t = train(write_config(tmp_path / 'a' / 'train.yml', cfg))
    rows = [r for r in t.history if 'val_loss' in r]
    assert [r['update'] for r in rows] == [10, 20] and rows[1]['val_loss'] < rows[0]['val_loss'] < 2.8, rows
    assert not any(k.startswith('val_') and k != 'val_loss' for k in rows[-1]), rows[-1]
    # the saved config has no criterion (the step computes the loss) and loads back, as ml-suite-eval loads it
    import torch, yaml
    from ml_suite.inference import checkpoint_config
    assert 'criterion' not in yaml.safe_load((tmp_path / 'a' / 'resolved_config.yml').read_text())['model']
    saved = checkpoint_config(torch.load(tmp_path / 'a' / 'latest.pt', weights_only=False), tmp_path / 'a' / 'latest.pt')
    assert (saved.model.step, saved.metrics) == ('model_loss', [])
    own = {**cfg, 'model': {'type': 'lm:CharLM', 'step': 'lm:lm_step'}}
    info = dry_run(write_config(tmp_path / 'b' / 'train.yml', own), out=lambda s: None)
    assert 'val_ppl' in info['validation'] and 'int64' in info['input_shape'], info
    t = train(tmp_path / 'b' / 'train.yml')
    last = t.history[-1]
    assert {'train_ppl', 'val_ppl', 'tokens_per_s'} <= set(last), last
    assert abs(last['val_ppl'] - 2.718281828 ** last['val_loss']) < 0.5, last
    # ml-suite-eval's code: the step on the split, as validation ran it
    from ml_suite.inference import evaluate
    res = evaluate(tmp_path / 'b', checkpoint='latest', device='cpu', write=False)
    assert res['metrics']['loss'] == pytest.approx(last['val_loss'], rel=1e-6), (res, last)
    assert res['metrics']['ppl'] == pytest.approx(last['val_ppl'], rel=1e-6) and res['updates'] == 20, res

def test_early_stopping_from_the_config_ends_the_run(tmp_path):
    "The built-in, named in the config: exit 0 before total_updates; ml-suite-status and a rerun say it ended."
    pytest.importorskip('ml_suite.early_stopping')
    from ml_suite.train import run_status, format_status, _main
    # mode max on a falling val_loss: the second validation does not improve on the first, and the run ends
    cfg = tiny_config(total_updates=40, updates_per_epoch=5, log_every=5, progress=False,
                      callbacks=[{'name': 'early_stopping', 'monitor': 'val_loss', 'mode': 'max', 'patience': 1}])
    path = write_config(tmp_path / 'train.yml', cfg)
    assert _main([str(path)]) == 0
    st = run_status(tmp_path)
    assert st['ended'] and st['resume_update'] == 10, st
    assert f"stopped early at update 10: {st['ended']}" in format_status(st)
    assert _main([str(path)]) == 0
    assert 'the run has finished: a callback ended it at update 10' in (tmp_path / 'training.log').read_text()
    assert run_status(tmp_path)['updates'] == 10
