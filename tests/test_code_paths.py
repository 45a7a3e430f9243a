"""Evaluation without PYTHONPATH (issue 16, item 7): a run whose model and dataset live in a module beside the config
(folder A) and whose run_dir is another folder (B) records where that module was imported from, and ml-suite-eval,
predict, export and load_model import it from there, from any working folder, with PYTHONPATH unset."""
import json, os, subprocess, sys
from pathlib import Path
import pytest, torch
from conftest import tiny_config, write_config

MOD = 'h3_gpt_suite'
CODE = '''
import torch
from torch import nn
from ml_suite.data import HeatDataset

class Fields(HeatDataset):
    "The built-in heat data, as a user's own dataset class."

class Net(nn.Module):
    def __init__(self, width=4):
        super().__init__(); self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, 1, 3, padding=1))
    def forward(self, x): return self.body(x)
'''

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "Code and config in A, the run in B; trained in this process, then the module forgotten (as a new process would)."
    from ml_suite.train import train
    root = tmp_path_factory.mktemp('codepaths')
    a, b = root / 'A', root / 'B'
    a.mkdir(); (a / f'{MOD}.py').write_text(CODE)
    cfg = tiny_config(run_dir=str(b / 'run'), dataset=dict(name=f'{MOD}:Fields'), model=dict(type=f'{MOD}:Net', width=4),
                      total_updates=10, updates_per_epoch=5, progress=False)
    cfg['model'].pop('depth')
    t = train(write_config(a / 'train.yml', cfg))
    assert t.finished
    sys.modules.pop(MOD, None)
    assert str(a) not in sys.path
    yield a, b / 'run'
    sys.modules.pop(MOD, None)

def test_the_checkpoint_records_where_the_user_module_was_imported_from(trained):
    a, run = trained
    st = torch.load(run / 'best.pt', weights_only=True)
    assert st['code_paths'] == {MOD: str(a)}

def test_ml_suite_eval_from_another_folder_without_pythonpath(trained, tmp_path):
    a, run = trained
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env.update(OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    r = subprocess.run([sys.executable, '-m', 'ml_suite.inference', 'eval', str(run), '--device', 'cpu'], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'loss' in r.stdout and (run / 'eval_best_val.json').is_file()

def test_load_model_predict_and_export_in_process_after_the_module_is_forgotten(trained, tmp_path):
    from ml_suite.inference import load_model, predict, export_model, evaluate
    a, run = trained
    sys.modules.pop(MOD, None)
    m = load_model(run, device='cpu')
    assert type(m.net).__module__ == MOD and m.code_folders[0] == str(a)
    assert str(a) not in sys.path, 'the folder is on the search path only while the names are resolved'
    sys.modules.pop(MOD, None)
    assert predict(run, 'val', device='cpu', progress=False).shape[1:] == (1, 16, 16)
    sys.modules.pop(MOD, None)
    assert evaluate(run, 'test', device='cpu', write=False)['samples'] == 128
    sys.modules.pop(MOD, None)
    assert export_model(run, tmp_path / 'net.pt2')['input_shape'][0] == 'batch'

def test_a_checkpoint_without_code_paths_falls_back_to_the_run_directory_and_names_the_folders_tried(trained, tmp_path):
    from ml_suite.checkpoint import load_checkpoint, save_checkpoint
    from ml_suite.core import ConfigError
    from ml_suite.inference import load_model
    a, run = trained
    st = load_checkpoint(run / 'best.pt'); del st['code_paths']
    old = tmp_path / 'old'; old.mkdir()
    save_checkpoint(st, old / 'best.pt')
    sys.modules.pop(MOD, None)
    with pytest.raises(ConfigError, match=rf"module '{MOD}' cannot be imported .*looked in {old} and on sys.path"):
        load_model(old, device='cpu')
    (old / f'{MOD}.py').write_text(CODE)                      # as before code_paths: the module beside the checkpoint
    sys.modules.pop(MOD, None)
    assert type(load_model(old, device='cpu').net).__name__ == 'Net'
    sys.modules.pop(MOD, None)


def test_a_module_name_used_by_two_config_folders_imports_each_folders_own(tmp_path):
    "Two examples in one process (a notebook, a kernel running two tutorials): each config gets its folder's module."
    from ml_suite.config import load_config
    from conftest import tiny_config, write_config
    for d, cls in (('a', 'First'), ('b', 'Second')):
        (tmp_path / d).mkdir()
        (tmp_path / d / 'twin_callbacks.py').write_text(f"from ml_suite.callbacks import Callback\nclass {cls}(Callback): pass\n")
    for d, cls in (('a', 'First'), ('b', 'Second'), ('a', 'First')):
        cfg, _ = load_config(write_config(tmp_path / d / 'train.yml', tiny_config(callbacks=[{'name': f'twin_callbacks:{cls}'}])))
        assert cfg.callbacks[0]['name'] == f'twin_callbacks:{cls}'
