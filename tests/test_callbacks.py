"Issue 18: a raising callback stops the run with a checkpoint and is named; callback state resumes; dict batches."
import pytest, torch
from conftest import tiny_config, write_config, run_cli, read_rows

BOOM = '''
from ml_suite.callbacks import Callback

class Boom(Callback):
    "Raises in `event` at update `at`."
    def __init__(self, event:str='after_validate', at:int=10):
        self.event, self.at = event, at
        self.every_update = event == 'after_update'
    def _maybe(self, trainer):
        if trainer.updates == self.at: raise ValueError(f"boom at {trainer.updates}")
    def after_validate(self, trainer, metrics):
        if self.event == 'after_validate': self._maybe(trainer)
    def after_update(self, trainer): self._maybe(trainer)
    def after_save(self, trainer):
        if self.event == 'after_save': self._maybe(trainer)

class Seen(Callback):
    "Counts validations; its count goes in the rows and in checkpoints."
    def __init__(self): self.n = 0
    def after_validate(self, trainer, metrics):
        self.n += 1
        trainer.add_scalars({'validations_seen': self.n})
    def state_dict(self): return {'n': self.n}
    def load_state_dict(self, sd): self.n = sd['n']
'''

# the events after the first: in the slow run (the default run's time budget)
@pytest.mark.parametrize('event, at, saved', [('after_validate', 10, 10),
                                              pytest.param('after_update', 7, 7, marks=pytest.mark.slow),
                                              pytest.param('after_save', 10, 10, marks=pytest.mark.slow)])
def test_a_raising_callback_leaves_a_checkpoint_and_is_named(tmp_path, event, at, saved):
    "Exit 1, one paragraph naming the callback, the event and the update; latest.pt holds that update; a rerun goes on."
    (tmp_path / 'boom.py').write_text(BOOM)
    cfg = tiny_config(total_updates=20, updates_per_epoch=5, log_every=5, progress=False,
                      callbacks=[{'name': 'boom:Boom', 'event': event, 'at': at}])
    path = write_config(tmp_path / 'train.yml', cfg)
    r = run_cli(path, cwd=tmp_path, env={'PYTHONPATH': str(tmp_path)})
    assert r.returncode == 1, r.stderr
    assert f"callback 0 (boom:Boom) raised ValueError in {event} at update {at}: boom at {at}" in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr
    # after_save: that checkpoint is written already; else one is written before the error
    first = "A checkpoint of update" in r.stderr
    assert first == (event != 'after_save'), r.stderr
    assert torch.load(tmp_path / 'latest.pt', weights_only=True)['updates'] == saved
    # fixed (the callback moved past the update): the rerun continues from the checkpoint and finishes
    r = run_cli(path, 'callbacks=[{name: "boom:Boom", event: after_validate, at: 999}]', cwd=tmp_path,
                env={'PYTHONPATH': str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert f'update {saved}/20' in r.stdout and torch.load(tmp_path / 'latest.pt', weights_only=True)['updates'] == 20

def test_a_callbacks_state_resumes_and_its_scalars_land_in_rows(tmp_path):
    "Seen counts validations: rerun from epoch_2.pt (update 10) to the end, the count goes on from 2."
    (tmp_path / 'boom.py').write_text(BOOM)
    cfg = tiny_config(total_updates=20, updates_per_epoch=5, log_every=5, progress=False,
                      checkpoint={'save_every_epochs': 1}, callbacks=[{'name': 'boom:Seen'}])
    path = write_config(tmp_path / 'train.yml', cfg)
    env = {'PYTHONPATH': str(tmp_path)}
    assert run_cli(path, cwd=tmp_path, env=env).returncode == 0
    assert [r['validations_seen'] for r in read_rows(tmp_path)] == [1, 2, 3, 4]
    assert torch.load(tmp_path / 'latest.pt', weights_only=True)['callbacks'] == {'0:Seen': {'n': 4}}
    r = run_cli(path, 'checkpoint.checkpoint_name=2', 'total_updates=30', cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert [r['validations_seen'] for r in read_rows(tmp_path)] == [1, 2, 3, 4, 5, 6]

DICT_DATA = '''
import torch
from torch.utils.data import Dataset

class Fields(Dataset):
    "Samples as dicts: fields with a mask, conditioning, and a target that is twice the field where unmasked."
    def __init__(self, split='train', n=64):
        g = torch.Generator().manual_seed(0 if split == 'train' else 1)
        self.u, self.c = torch.randn(n, 4, generator=g), torch.rand(n, 1, generator=g)
    def __len__(self): return len(self.u)
    def __getitem__(self, i):
        mask = torch.ones(4)
        return {'fields': {'u': self.u[i], 'mask': mask}, 'cond': self.c[i], 'target': 2 * self.u[i] + self.c[i]}

class FieldNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net, self.cond = torch.nn.Linear(4, 4), torch.nn.Linear(1, 4)
    def forward(self, fields, cond): return self.net(fields['u']) * fields['mask'] + self.cond(cond)

def step(model, batch):
    pred = model(batch['fields'], batch['cond'])
    return torch.nn.functional.mse_loss(pred, batch['target']), {'pred': pred, 'target': batch['target']}
'''

def test_a_dict_dataset_trains_from_the_config_with_its_step_and_metrics(tmp_path):
    "Dict samples through the loader, a step of its own, val_mae from its pred and target; ml-suite-eval agrees."
    (tmp_path / 'fields.py').write_text(DICT_DATA)
    cfg = dict(dataset={'name': 'fields:Fields'}, model={'type': 'fields:FieldNet', 'step': 'fields:step'},
               batch_size=8, total_updates=60, updates_per_epoch=30, log_every=30, metrics=['mae'], progress=False,
               optimizer={'name': 'Adam', 'learning_rate': 3e-2})
    path = write_config(tmp_path / 'train.yml', cfg)
    r = run_cli(path, cwd=tmp_path, env={'PYTHONPATH': str(tmp_path)})
    assert r.returncode == 0, r.stderr
    rows = [x for x in read_rows(tmp_path) if 'val_loss' in x]
    assert rows[1]['val_loss'] < rows[0]['val_loss'] and 'val_mae' in rows[1], rows
    from ml_suite.inference import evaluate
    res = evaluate(tmp_path, checkpoint='latest', device='cpu', write=False)
    assert res['metrics']['loss'] == pytest.approx(rows[1]['val_loss'], rel=1e-6)
    assert res['metrics']['mae'] == pytest.approx(rows[1]['val_mae'], rel=1e-6), res
