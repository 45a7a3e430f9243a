"Training end to end through the command line: loss falls, run directory, checkpoints, user modules, .env."
import os, shutil, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch, yaml
from conftest import ROOT, tiny_config, write_config, run_cli, read_rows

def test_tiny_model_loss_falls_and_run_dir_is_complete(tmp_path):
    cfg_path = write_config(tmp_path / 'exp' / 'train.yml', tiny_config(total_updates=60, updates_per_epoch=20))
    r = run_cli(cfg_path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / 'exp'                         # default run directory: the config file's folder
    assert {'training.log', 'resolved_config.yml', 'metrics.jsonl', 'latest.pt', 'best.pt'} <= {p.name for p in run.iterdir()}
    rows = read_rows(run)
    assert [r['update'] for r in rows] == list(range(5, 61, 5))
    assert all({'update', 'train_loss', 'lr'} <= set(r) for r in rows)
    vals = [r for r in rows if 'val_loss' in r]
    assert [r['update'] for r in vals] == [20, 40, 60]
    assert rows[-1]['train_loss'] < rows[0]['train_loss'] / 2
    assert vals[-1]['val_loss'] < vals[0]['val_loss']
    assert 'val_mae' in vals[0] and 'val_rmse' in vals[0]
    ck = torch.load(run / 'latest.pt', weights_only=True)
    assert {'model', 'optimizer', 'scheduler', 'scaler', 'updates'} <= set(ck) and ck['updates'] == 60
    assert not any(k.startswith(('module.', '_orig_mod.')) for k in ck['model'])
    best = torch.load(run / 'best.pt', weights_only=True)
    assert best['best_val_loss'] == min(v['val_loss'] for v in vals)
    assert 'update 60/60' in (run / 'training.log').read_text()
    assert yaml.safe_load((run / 'resolved_config.yml').read_text())['total_updates'] == 60

def test_rerun_resumes_and_numbered_checkpoints(tmp_path):
    cfg_path = write_config(tmp_path / 'train.yml', tiny_config(total_updates=20, updates_per_epoch=10,
                                                                checkpoint=dict(save_every_epochs=1)))
    assert run_cli(cfg_path, cwd=tmp_path).returncode == 0
    r = run_cli(cfg_path, 'total_updates=30', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'resumed from' in r.stdout and 'at update 20/30' in r.stdout
    assert [row['update'] for row in read_rows(tmp_path)] == list(range(5, 31, 5))
    assert {'epoch_1.pt', 'epoch_2.pt', 'epoch_3.pt'} <= {p.name for p in tmp_path.iterdir()}
    assert torch.load(tmp_path / 'epoch_2.pt', weights_only=True)['updates'] == 20

def test_restart_false_loads_weights_only(tmp_path):
    pre = write_config(tmp_path / 'pre' / 'train.yml', tiny_config(total_updates=20, updates_per_epoch=10))
    assert run_cli(pre, cwd=tmp_path).returncode == 0
    ft = write_config(tmp_path / 'ft' / 'train.yml', tiny_config(
        total_updates=10, updates_per_epoch=10, checkpoint=dict(path=str(tmp_path / 'pre'), restart=False)))
    r = run_cli(ft, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'loaded weights from' in r.stdout
    assert [row['update'] for row in read_rows(tmp_path / 'ft')] == [5, 10]

USER_MODULE = '''
import torch
from torch import nn
from torch.utils.data import Dataset

class Line(Dataset):
    "y = 3x - 1 with a little noise: a user's own dataset."
    def __init__(self, split, n=256, noise=0.01):
        g = torch.Generator().manual_seed(0 if split == 'train' else 1)
        self.x = torch.randn(n, 1, generator=g)
        self.y = 3 * self.x - 1 + noise * torch.randn(n, 1, generator=g)
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return self.x[i], self.y[i]

class TinyNet(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    def forward(self, x): return self.net(x)
'''

def test_import_path_model_and_dataset_from_a_user_module(tmp_path):
    exp = tmp_path / 'exp'
    exp.mkdir()
    (exp / 'my_things.py').write_text(USER_MODULE)   # beside the config: importable from the config's folder
    cfg = tiny_config(dataset=dict(name='my_things:Line', n=256), model=dict(type='my_things:TinyNet', hidden=16, criterion='mse'),
                      total_updates=300, updates_per_epoch=100, batch_size=32, optimizer=dict(name='Adam', learning_rate=3e-2),
                      metrics=['mae'])
    cfg['dataset'].pop('size'); cfg['dataset'].pop('modes'); cfg['dataset'].pop('num_samples')
    cfg['model'].pop('width'); cfg['model'].pop('depth')
    r = run_cli(write_config(exp / 'train.yml', cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    vals = [row['val_loss'] for row in read_rows(exp) if 'val_loss' in row]
    assert vals[-1] < vals[0] / 2 and vals[-1] < 0.1, vals
    assert 'TinyNet with' in r.stdout

def test_unknown_key_of_a_user_model_is_a_config_error(tmp_path):
    (tmp_path / 'my_things.py').write_text(USER_MODULE)
    cfg = tiny_config(model=dict(type='my_things:TinyNet', hiden=16))
    cfg['model'].pop('width'); cfg['model'].pop('depth')
    r = run_cli(write_config(tmp_path / 'train.yml', cfg), cwd=tmp_path)
    assert r.returncode == 2 and "unknown key 'hiden' in model" in r.stderr and "did you mean 'hidden'" in r.stderr

def test_config_path_flag_console_script_and_dotenv(tmp_path):
    (tmp_path / '.env').write_text('RESULTS_DIR=./results  # where runs go\nexport MY_WIDTH=4\n')
    cfg = tiny_config(total_updates=10, updates_per_epoch=10, run_dir='${RESULTS_DIR}/exp1')
    cfg_path = write_config(tmp_path / 'configs' / 'train.yml', cfg)
    env = {k: v for k, v in os.environ.items() if k != 'RESULTS_DIR'}
    script = Path(sys.executable).parent / 'ml-suite-train'
    assert script.exists(), 'the console script is installed'
    r = subprocess.run([str(script), '--config_path', str(cfg_path), 'model.width=${MY_WIDTH}'], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    run = tmp_path / 'results' / 'exp1'
    assert (run / 'latest.pt').exists()
    assert yaml.safe_load((run / 'resolved_config.yml').read_text())['model']['width'] == 4

def test_dict_config_needs_run_dir():
    from ml_suite.train import train
    from ml_suite.core import ConfigError
    with pytest.raises(ConfigError, match='must name its run_dir'): train(tiny_config())

def test_train_function_runs_what_the_cli_runs(tmp_path):
    "The same config from a notebook function and from the CLI gives the same weights."
    from ml_suite.train import train
    cfg = tiny_config(total_updates=15, updates_per_epoch=15)
    t = train({**cfg, 'run_dir': str(tmp_path / 'py')})
    assert run_cli(write_config(tmp_path / 'cli' / 'train.yml', cfg), cwd=tmp_path).returncode == 0
    a = torch.load(tmp_path / 'py' / 'latest.pt', weights_only=True)['model']
    b = torch.load(tmp_path / 'cli' / 'latest.pt', weights_only=True)['model']
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert t.finished and t.updates == 15

def test_import_is_cheap_and_safe():
    code = ("import sys, ml_suite.train, ml_suite.trainer, ml_suite.tracking, ml_suite.config; "
            "import torch; assert 'wandb' not in sys.modules, 'wandb imported'; "
            "assert not torch.cuda.is_initialized(); "
            "import torch.distributed as d; assert not d.is_initialized()")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

@pytest.mark.slow   # the whole quickstart, 500 updates (about 25 s): CI's slow step runs it
def test_quickstart_trains_to_half_its_first_validation_loss(tmp_path):
    "The README's example: configs/quickstart.yml, its last validation loss under half of its first."
    r = run_cli(ROOT / 'configs' / 'quickstart.yml', f'run_dir={tmp_path / "qs"}', cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    vals = [row['val_loss'] for row in read_rows(tmp_path / 'qs') if 'val_loss' in row]
    assert len(vals) >= 3 and vals[-1] < vals[0] / 2, vals
