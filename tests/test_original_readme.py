"""The original suite's README, followed as a new user would: its config blocks copied verbatim, its `.env`, its
`get_model(config)` / `get_dataset(config, split)` factories beside the config in `$RESULTS_DIR/my_experiment`,
run from the repository with `ml-suite-train` and with `torchrun`."""
import json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest
from conftest import ROOT, read_rows
from test_original_suite import SEED_CONFIG

# The README's blocks, verbatim (Step 6, "Learning Rate Scheduling", "Checkpointing", "Time Keeping": the same text
# as the in-process tests use), with its WandB block; only `factories` is ml_suite's: it names the two functions the
# original suite had users edit.
TRAIN_YML = SEED_CONFIG + """
# WandB
wandb:
  enabled: true
  project: my-project
  entity: my-username

factories:
  model: model_utils:get_model
  dataset: dataset:get_dataset
"""

MODEL_UTILS = '''\
import torch

class MyCustomModel(torch.nn.Module):
    def __init__(self, input_dim, hidden_dim):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(input_dim, hidden_dim), torch.nn.GELU(),
                                       torch.nn.Linear(hidden_dim, 1))
    def forward(self, x): return self.net(x)

def get_model(config: dict) -> torch.nn.Module:
    """Factory function that returns a model based on config."""
    model_type = config.get("type", "transformer")

    if model_type == "my_custom_model":
        return MyCustomModel(
            input_dim=config["input_dim"],
            hidden_dim=config["hidden_dim"],
        )
    raise ValueError(f"unknown model type {model_type}")
'''

DATASET = '''\
import os
import torch
from torch.utils.data import Dataset

class MyDataset(Dataset):
    def __init__(self, path):
        d = torch.load(path)
        self.x, self.y = d["x"], d["y"]
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return self.x[i], self.y[i]

def get_dataset(config: dict, split: str = "train") -> Dataset:
    """
    Factory function that returns a dataset.

    Args:
        config: Dataset configuration from YAML
        split: "train" or "valid"

    Returns:
        A PyTorch Dataset that returns (input, target) tuples
    """
    return MyDataset(os.path.join(os.environ["DATA_DIR"], config["name"] + ".pt"))
'''

def _experiment(tmp: Path, name: str) -> Path:
    "Step 2 and 6 of the README: `.env` (with its placeholder key), data in DATA_DIR, the config copied into RESULTS_DIR."
    import torch
    data, results = tmp / 'datasets', tmp / 'results'
    data.mkdir(exist_ok=True)
    if not (data / 'my_dataset.pt').exists():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1280, 128, generator=g)
        torch.save({'x': x, 'y': x[:, :4].sum(1, keepdim=True)}, data / 'my_dataset.pt')
    exp = results / name
    exp.mkdir(parents=True)
    (exp / 'train.yml').write_text(TRAIN_YML)
    (exp / 'model_utils.py').write_text(MODEL_UTILS)
    (exp / 'dataset.py').write_text(DATASET)
    (exp / '.env').write_text(textwrap.dedent(f"""\
        WANDB_API_KEY=your_api_key_here     # Get from wandb.ai/settings
        BASE_DIR={ROOT}          # Absolute path to ML-Training-Suite
        DATA_DIR={data}      # Where your training data lives
        RESULTS_DIR={results}         # Where checkpoints and logs go
        """))
    return exp

# "Start with small total_updates": the run's length on the command line, the file as the README wrote it
SHORT = ['total_updates=40', 'updates_per_epoch=20', 'lr_scheduler.first_stage.num_updates=10']

def _env():
    # hermetic: what the README's .env sets comes from that file, not from this process
    env = {k: v for k, v in os.environ.items() if not k.startswith('WANDB_') and k not in ('BASE_DIR', 'DATA_DIR', 'RESULTS_DIR')}
    return {**env, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1', 'PATH': f"{Path(sys.executable).parent}:{env['PATH']}"}

def _check_run(exp: Path, out: str):
    rows = read_rows(exp)
    assert rows[-1]['update'] == 40 and rows[-1]['val_loss'] is not None
    assert (exp / 'latest.pt').is_file() and (exp / 'best.pt').is_file()      # the run directory: the config's folder
    assert list(exp.glob('wandb/offline-run-*/run-*.wandb'))                   # tracked offline, not ended
    assert 'wandb sync' in out and 'your_api_key_here' not in out
    assert not (ROOT / 'runs' / 'quickstart' / 'my_experiment').exists()

def test_original_readme_verbatim_with_ml_suite_train(tmp_path):
    exp = _experiment(tmp_path, 'my_experiment')
    r = subprocess.run(['ml-suite-train', str(exp / 'train.yml'), *SHORT], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    _check_run(exp, r.stdout + r.stderr)
    # evaluation from another folder, without PYTHONPATH: the run knows where its factories came from
    env = {k: v for k, v in _env().items() if k != 'PYTHONPATH'}
    e = subprocess.run(['ml-suite-eval', str(exp)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert e.returncode == 0, e.stdout + e.stderr
    assert 'loss' in e.stdout, e.stdout

@pytest.mark.slow
def test_original_readme_verbatim_with_torchrun(tmp_path):
    exp = _experiment(tmp_path, 'my_experiment_ddp')
    r = subprocess.run(['torchrun', '--standalone', '--nproc_per_node=2', '-m', 'ml_suite.train', str(exp / 'train.yml'),
                        *SHORT], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    _check_run(exp, r.stdout + r.stderr)
    assert '2 process(es)' in (exp / 'training.log').read_text()
