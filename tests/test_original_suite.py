"""The original suite's configs and code plug in (issue 16, items 3, 6, 8, 10): its three-stage schedule, its
`get_model(config)`/`get_dataset(config, split)` factories, a fractional `train_split`, nanoGPT's `GPT(config)`,
a `.env` beside the config, and `nonfinite.policy: off` unquoted."""
import csv, json, math, os, signal, sys, textwrap
from pathlib import Path
import pytest, torch, yaml
from ml_suite.core import ConfigError
from ml_suite.config import load_config, stages

# The original suite's README blocks, verbatim (its "Step 6" and "Learning Rate Scheduling" sections).
SEED_SCHEDULE = """
lr_scheduler:
  first_stage:      # Warmup: gradually increase LR
    name: LinearLR
    start_factor: 0.001
    end_factor: 1.0
    num_updates: 5000

  second_stage:     # Main training: cosine decay
    name: CosineAnnealingLR
    num_updates: -1    # -1 = use remaining updates
    end_factor: 0.01   # End at 1% of peak LR

  third_stage:      # Cooldown: decay to zero
    name: LinearLR
    end_factor: 0
    num_updates: 10
"""
SEED_CONFIG = """
# Dataset - your data parameters
dataset:
  name: my_dataset
  train_split: 0.8

# Model - must match get_model()
model:
  type: my_custom_model
  input_dim: 128
  hidden_dim: 256
  criterion: MSE

# Training parameters
batch_size: 64            # Per GPU!
total_updates: 100000     # Total gradient updates
updates_per_epoch: 1000   # Updates between evaluations

# Optimizer
optimizer:
  name: AdamW
  learning_rate: 1e-4
  weight_decay: 0.01
""" + SEED_SCHEDULE + """
checkpoint:
  checkpoint_name: latest  # or "best" or epoch number like "5"
  restart: true

time_limit: "24:00:00"
"""
# The original suite's Step 4 and Step 5, filled in.
MODEL_UTILS = '''
import torch

class MyCustomModel(torch.nn.Module):
    def __init__(self, input_dim, hidden_dim):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(input_dim, hidden_dim), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden_dim, input_dim))
    def forward(self, x): return self.net(x)

def get_model(config: dict) -> torch.nn.Module:
    """Factory function that returns a model based on config."""
    model_type = config.get("type", "transformer")

    if model_type == "my_custom_model":
        return MyCustomModel(
            input_dim=config["input_dim"],
            hidden_dim=config["hidden_dim"],
        )
    elif model_type == "transformer":
        raise NotImplementedError("no transformer here")
'''
DATASET = '''
import torch
from torch.utils.data import Dataset

class MyDataset(Dataset):
    def __init__(self, n, dim, split):
        self.n, self.dim, self.split = n, dim, split
    def __len__(self): return self.n
    def __getitem__(self, i):
        x = torch.randn(self.dim, generator=torch.Generator().manual_seed(i))
        return x, 0.5 * x

def get_dataset(config: dict, split: str = "train") -> Dataset:
    """
    Factory function that returns a dataset.

    Args:
        config: Dataset configuration from YAML
        split: "train" or "valid"

    Returns:
        A PyTorch Dataset that returns (input, target) tuples
    """
    assert config["name"] == "my_dataset", config
    return MyDataset(n=int(config.get("num_samples", 200)), dim=128, split=split)
'''

@pytest.fixture
def experiment(tmp_path):
    "$RESULTS_DIR/my_experiment with the original suite's config, plus factories, and its model and dataset code."
    d = tmp_path / 'results' / 'my_experiment'
    d.mkdir(parents=True)
    (d / 'model_utils.py').write_text(MODEL_UTILS)
    (d / 'dataset.py').write_text(DATASET)
    (d / 'train.yml').write_text(SEED_CONFIG + "\nfactories:\n  model: 'model_utils:get_model'\n  dataset: 'dataset:get_dataset'\n")
    yield d
    for m in ('model_utils', 'dataset'): sys.modules.pop(m, None)

def lr_schedule(cfg) -> list:
    "The LR at every update, computed as `dry_run` does, and the value after the last update."
    from ml_suite.optim import build_lr_scheduler
    import warnings
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optimizer.learning_rate)
    sched, lrs = build_lr_scheduler(opt, stages(cfg), cfg.total_updates), []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        for _ in range(cfg.total_updates): lrs.append(opt.param_groups[0]['lr']); sched.step()
    return lrs + [opt.param_groups[0]['lr']]

# ---- item 3: the three-stage schedule ----

def test_seed_schedule_verbatim_warms_up_decays_to_1pc_and_cools_down_to_0(tmp_path):
    p = tmp_path / 'train.yml'
    p.write_text("dataset: {name: heat}\nmodel: {type: unet}\nbatch_size: 8\ntotal_updates: 6000\n"
                 "optimizer: {name: AdamW, learning_rate: 1e-4}\n" + SEED_SCHEDULE)
    load_config(p, names=False)                       # the torch-free check accepts it
    cfg, _ = load_config(p)                           # and so does the full one
    lrs = lr_schedule(cfg)
    with open(tmp_path / 'schedule.csv', 'w', newline='') as f:
        csv.writer(f).writerows([('update', 'lr')] + list(enumerate(lrs)))
    rows = list(csv.DictReader(open(tmp_path / 'schedule.csv')))
    lr = [float(r['lr']) for r in rows]
    assert len(lr) == 6001
    assert math.isclose(lr[0], 1e-7, rel_tol=1e-9)                  # warmup from 0.1% of the peak
    assert math.isclose(lr[5000], 1e-4, rel_tol=1e-9)               # the peak, at the end of the warmup
    assert max(lr) <= 1e-4 * (1 + 1e-9)
    assert lr[0] < lr[2500] < lr[5000]                                # it rises during the warmup
    after = lr[5000:]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(after, after[1:])), 'a step up after the peak'
    assert max(b / a for a, b in zip(after, after[1:]) if a > 0) <= 1
    assert math.isclose(lr[5990], 1e-6, rel_tol=1e-9)               # the cooldown starts where the cosine ended
    assert math.isclose(lr[5989], 1e-6, rel_tol=1e-3)               # (the cosine's last update is at its end value)
    assert abs(lr[6000]) < 1e-15 and lr[5999] < 2e-7                # and cools down to 0

def test_cosine_end_factor_and_eta_min_together_are_refused(tmp_path):
    p = tmp_path / 'train.yml'
    p.write_text("dataset: {name: heat}\nmodel: {type: unet}\nbatch_size: 8\ntotal_updates: 100\n"
                 "lr_scheduler:\n  first_stage: {name: CosineAnnealingLR, end_factor: 0.01, eta_min: 1.0e-6}\n")
    with pytest.raises(ConfigError, match='Keep one of them'): load_config(p, names=False)
    p.write_text(p.read_text().replace(', eta_min: 1.0e-6', ''))
    with pytest.raises(ConfigError, match=r"end_factor \(command-line override 'lr_scheduler.first_stage.end_factor=1.5'\) must be a number in \[0, 1\]"):
        load_config(p, ['lr_scheduler.first_stage.end_factor=1.5'])
    assert load_config(p)[0].lr_scheduler.first_stage.kwargs == {'end_factor': 0.01}

# ---- item 6: factories, config-style and dataclass-style sections, fractional splits ----

def test_seed_config_verbatim_with_factories_trains(experiment, monkeypatch):
    from ml_suite.train import train
    monkeypatch.chdir(experiment.parent.parent)      # run from elsewhere, as from the repository
    load_config(experiment / 'train.yml', names=False)
    # the verbatim schedule's 5000-update warmup does not fit a 20-update test: shorten it on the command line
    t = train(experiment / 'train.yml', ['total_updates=20', 'updates_per_epoch=10', 'lr_scheduler.first_stage.num_updates=4',
                                         f'run_dir={experiment / "run"}'])
    assert t.finished and t.updates == 20
    assert type(t.raw_model).__name__ == 'MyCustomModel'
    assert len(t.train_data.dataset) == 160                          # 80% of the 200 samples
    rows = [json.loads(l) for l in (experiment / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert any(r.get('val_loss') is not None for r in rows)

def test_config_style_callables_as_import_paths(experiment):
    from ml_suite.models import get_model
    from ml_suite.data import get_dataset
    (experiment / 'mods.py').write_text(MODEL_UTILS.replace('config.get("type", "transformer")', '"my_custom_model"')
                                        + DATASET.replace('assert config["name"] == "my_dataset", config', 'pass'))
    p = experiment / 'paths.yml'
    p.write_text("dataset: {name: 'mods:get_dataset', train_split: 0.8, num_samples: 50}\n"
                 "model: {type: 'mods:get_model', input_dim: 128, hidden_dim: 8, criterion: mse}\n"
                 "batch_size: 4\ntotal_updates: 10\n")
    cfg, src = load_config(p)                          # refused before ("get_model accepts: config")
    assert type(get_model(cfg, search_path=src.folder)).__name__ == 'MyCustomModel'
    assert len(get_dataset(cfg, 'val', search_path=src.folder)) == 10
    sys.modules.pop('mods', None)

def test_factory_errors_name_the_factory_and_the_name(experiment):
    from ml_suite.models import get_model
    from ml_suite.core import RunError
    cfg, src = load_config(experiment / 'train.yml', ['model.type=resnet'])
    with pytest.raises(ConfigError, match=r"factories.model 'model_utils:get_model' \(train.yml line \d+\) returned None "
                                          r"\(a NoneType\) for model.type 'resnet'.*not a torch.nn.Module"):
        get_model(cfg, search_path=src.folder, src=src)
    cfg, src = load_config(experiment / 'train.yml', ['model.type=transformer'])
    with pytest.raises(RunError, match="raised NotImplementedError: no transformer here when asked for model.type 'transformer'"):
        get_model(cfg, search_path=src.folder, src=src)

def test_plain_name_without_factories_mentions_factories(experiment):
    text = (experiment / 'train.yml').read_text().split('\nfactories:')[0]
    (experiment / 'nofac.yml').write_text(text)
    with pytest.raises(ConfigError, match=r"unknown dataset.name 'my_dataset'.*factories: \{dataset: 'my_module:get_dataset'\}"):
        load_config(experiment / 'nofac.yml')
    with pytest.raises(ConfigError, match=r"unknown model.type 'my_custom_model'.*factories: \{model: 'my_module:get_model'\}"):
        load_config(experiment / 'nofac.yml', ['dataset.name=heat', 'dataset.train_split=train'])

GPT_MODULE = '''
from dataclasses import dataclass
import torch.nn as nn

@dataclass
class GPTConfig:
    block_size: int = 16
    vocab_size: int = 32
    n_layer: int = 1
    n_embd: int = 8
    dropout: float = 0.0
    bias: bool = True

class GPT(nn.Module):
    def __init__(self, config{annotation}):
        super().__init__()
        assert config.vocab_size is not None
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)
    def forward(self, idx): return self.lm_head(self.wte(idx))
'''

@pytest.mark.parametrize('annotation', [': GPTConfig', ''])   # annotated, and as nanoGPT's model.py writes it
def test_dataclass_config_model(tmp_path, annotation, restore_process):
    from ml_suite.models import get_model
    mod = f'gpt_{"ann" if annotation else "plain"}'
    (tmp_path / f'{mod}.py').write_text(GPT_MODULE.replace('{annotation}', annotation))
    p = tmp_path / 'gpt.yml'
    p.write_text(f"dataset: {{name: heat}}\nmodel: {{type: '{mod}:GPT', vocab_size: 40, n_embd: '16', dropout: 0,"
                 f" criterion: mse}}\nbatch_size: 4\ntotal_updates: 10\n")
    load_config(p, names=False)
    cfg, src = load_config(p)
    m = get_model(cfg, search_path=src.folder)
    assert type(m.config).__name__ == 'GPTConfig'
    assert (m.config.vocab_size, m.config.n_embd, m.config.dropout, m.config.block_size) == (40, 16, 0.0, 16)
    assert m.lm_head.out_features == 40
    from ml_suite.train import main
    p.write_text(p.read_text().replace('vocab_size: 40', 'vocab_sise: 40'))
    with pytest.raises(ConfigError, match=r"unknown key 'vocab_sise' in model \(gpt.yml line 2\); did you mean "
                                          r"'vocab_size'\? model builds a GPTConfig, whose fields are: block_size, vocab_size"):
        load_config(p, names=False)
    assert main([str(p), '--dry-run']) == 2
    sys.modules.pop(mod, None)

def test_fractional_train_split_is_deterministic_and_disjoint(tmp_path):
    from ml_suite.data import dataset_splits, CheckedDataset
    sec = {'name': 'heat', 'size': 8, 'modes': 2, 'num_samples': 50, 'train_split': 0.6, 'test_split': 0.2}
    a = dataset_splits(sec, ('train', 'val', 'test'), seed=3)
    b = dataset_splits(sec, ('train', 'val', 'test'), seed=3)
    assert {k: v.indices for k, v in a.items()} == {k: v.indices for k, v in b.items()}   # every rank, every restart
    assert [len(a[k]) for k in ('train', 'val', 'test')] == [30, 10, 10]
    everything = a['train'].indices + a['val'].indices + a['test'].indices
    assert sorted(everything) == list(range(50))                                        # disjoint and complete
    assert dataset_splits(sec, ('train',), seed=4)['train'].indices != a['train'].indices   # the seed decides
    assert torch.equal(a['val'][0][0], a['train'].dataset[a['val'].indices[0]][0])       # samples of the one dataset
    # the per-sample check names the index in the user's dataset
    class Broken(torch.utils.data.Dataset):
        def __init__(self, split='train'): pass
        def __len__(self): return 20
        def __getitem__(self, i): raise OSError(f'bad file {i}')
    parts = dataset_splits({'name': Broken, 'train_split': 0.5}, ('val',))
    from ml_suite.data import DataError
    with pytest.raises(DataError, match=f"failed to give sample {parts['val'].indices[0]}: Broken.__getitem__"):
        CheckedDataset(parts['val'], 'val')[0]

def test_fractional_split_values_are_checked(tmp_path):
    base = dict(dataset={'name': 'heat', 'num_samples': 10}, model={'type': 'unet'}, batch_size=2, total_updates=4)
    for over, msg in [({'train_split': 1.5}, r'must be a fraction in \(0, 1\)'),
                      ({'train_split': 0.8, 'test_split': 0.3}, 'leaves nothing for validation'),
                      ({'test_split': 0.1}, 'give train_split a fraction too'),
                      ({'train_split': 0.8, 'val_split': 'valid'}, 'remove val_split')]:
        with pytest.raises(ConfigError, match=msg): load_config({**base, 'dataset': {**base['dataset'], **over}}, names=False)
    cfg, _ = load_config({**base, 'dataset': {**base['dataset'], 'train_split': 0.8}})   # refused before: "must be a string"
    assert cfg.dataset.train_split == 0.8
    from ml_suite.data import get_dataset
    with pytest.raises(ConfigError, match='at least one sample'):
        get_dataset({'name': 'heat', 'num_samples': 1, 'train_split': 0.5}, 'train')

# ---- item 8: .env beside the config ----

@pytest.fixture
def restore_process():
    "`main` installs signal handlers and an excepthook: put them back."
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    hook = sys.excepthook
    yield
    for s, h in handlers.items(): signal.signal(s, h)
    sys.excepthook = hook

def test_dotenv_beside_the_config_is_read_from_any_folder(tmp_path, monkeypatch, restore_process):
    from ml_suite.train import main
    exp, elsewhere = tmp_path / 'results' / 'my_experiment', tmp_path / 'repo'
    exp.mkdir(parents=True); elsewhere.mkdir()
    monkeypatch.setenv('DATA_DIR', 'x'); monkeypatch.delenv('DATA_DIR')   # restored (unset) afterwards
    (exp / '.env').write_text(f'DATA_DIR={tmp_path / "data"}\n')
    cfg = dict(dataset=dict(name='heat', size=16, modes=4, num_samples=32), model=dict(type='unet', width=4, depth=1),
               batch_size=8, total_updates=2, run_dir='${DATA_DIR}/run')
    (exp / 'train.yml').write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(elsewhere)
    assert main([str(exp / 'train.yml')]) == 0
    assert (tmp_path / 'data' / 'run' / 'latest.pt').is_file()

def test_unset_variable_names_the_env_files_looked_for(tmp_path, monkeypatch):
    exp = tmp_path / 'results' / 'my_experiment'
    exp.mkdir(parents=True)
    (exp / '.env').write_text('OTHER=1\n')
    (exp / 'train.yml').write_text("dataset: {name: heat}\nmodel: {type: unet}\nbatch_size: 8\ntotal_updates: 2\n"
                                   "run_dir: ${ML_SUITE_TEST_UNSET}/run\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e: load_config(exp / 'train.yml', environ={})
    msg = str(e.value)
    assert 'ML_SUITE_TEST_UNSET is not set' in msg
    for folder in (tmp_path, exp, exp.parent):
        assert str(folder.resolve() / '.env') in msg, msg
    assert f"{exp.resolve() / '.env'} (read, without it)" in msg

# ---- item 10: nonfinite.policy: off ----

def test_nonfinite_policy_off_unquoted(tmp_path):
    p = tmp_path / 'train.yml'
    p.write_text("dataset: {name: heat}\nmodel: {type: unet}\nbatch_size: 8\ntotal_updates: 2\nnonfinite:\n  policy: off\n")
    assert yaml.safe_load(p.read_text())['nonfinite']['policy'] is False     # what YAML 1.1 reads
    assert load_config(p, names=False)[0].nonfinite.policy == 'off'
    assert load_config(p, ['nonfinite.policy=off'])[0].nonfinite.policy == 'off'
    with pytest.raises(ConfigError, match="must be one of 'skip', 'stop', 'off', got True"):
        load_config(p, ['nonfinite.policy=on'], names=False)
