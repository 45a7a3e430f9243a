"""Issue 16, items 1, 2 and parts of 10: a changed config on resume is logged and takes effect (or is refused before
anything is written), a run directory belongs to the config that started it, `ml-suite-status` says where a rerun
resumes, `checkpoint_name: N` explains epoch files, a config error under torchrun is printed once."""
import contextlib, io, json, os, shutil, subprocess, sys, warnings
from pathlib import Path
import pytest, torch
from conftest import ROOT, tiny_config, write_config, read_rows
from ml_suite.core import ConfigError
from ml_suite.train import train, main
from ml_suite.runs import status_main

SCHEDULE = dict(first_stage=dict(name='LinearLR', start_factor=0.1, num_updates=5),
                second_stage=dict(name='CosineAnnealingLR', num_updates=-1))

def snapshot(folder: Path) -> dict:
    "Every file under `folder` with its size and modification time."
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob('*')}

def cli(*args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err): code = main([str(a) for a in args])
    return code, err.getvalue()

def fresh_lrs(cfg_path: Path, overrides=()) -> list:
    "The LR each update 1..total_updates of a fresh run of the config uses."
    from ml_suite.config import load_config, stages
    from ml_suite.optim import build_lr_scheduler
    cfg, _ = load_config(cfg_path, list(overrides))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optimizer.learning_rate)
    sched, lrs = build_lr_scheduler(opt, stages(cfg), cfg.total_updates), []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        for _ in range(cfg.total_updates): lrs.append(opt.param_groups[0]['lr']); sched.step()
    return lrs

def test_nan_stopped_run_rerun_with_a_lower_learning_rate_uses_it(tmp_path):
    "(a) stopped for NaN (exit 5); the rerun with optimizer.learning_rate lowered trains at the new rate, not the old one."
    cfg = tiny_config(total_updates=30, updates_per_epoch=10, log_every=1, optimizer=dict(name='AdamW', learning_rate=1e12),
                      nonfinite=dict(policy='skip', max_consecutive=3), progress=False)
    path = write_config(tmp_path / 'run' / 'train.yml', cfg)
    code, err = cli(path)
    assert code == 5, err
    stopped_at = torch.load(tmp_path / 'run' / 'latest.pt', weights_only=True)['updates']
    code, err = cli(path, 'optimizer.learning_rate=1e-3')
    log = (tmp_path / 'run' / 'training.log').read_text()
    assert "config changed since the checkpoint: optimizer.learning_rate 1000000000000.0 -> 0.001" in log
    resumed = [r for r in read_rows(tmp_path / 'run') if r['update'] > stopped_at]
    assert resumed and all(r['lr'] == 1e-3 for r in resumed), resumed

def test_finished_run_rerun_longer_with_a_new_peak_follows_the_new_schedule(tmp_path):
    "(b) 40 updates done; rerun with total_updates=60 optimizer.learning_rate=1e-5: 20 more, at a fresh run's LRs."
    path = write_config(tmp_path / 'run' / 'train.yml', tiny_config(lr_scheduler=SCHEDULE, progress=False))
    assert train(path).updates == 40
    new = ['total_updates=60', 'optimizer.learning_rate=1e-5', 'optimizer.weight_decay=0.25']
    t = train(path, new)
    # the new weight decay in the decayed group; the biases' and norm gains' group keeps 0
    assert t.updates == 60 and [g['weight_decay'] for g in t.optimizer.param_groups] == [0.25, 0.0]
    expect = fresh_lrs(path, new)
    rows = [r for r in read_rows(tmp_path / 'run') if r['update'] > 40]
    assert [r['update'] for r in rows] == [45, 50, 55, 60]
    assert [r['lr'] for r in rows] == pytest.approx([expect[r['update'] - 1] for r in rows], rel=1e-12)
    log = (tmp_path / 'run' / 'training.log').read_text()
    assert "config changed since the checkpoint: total_updates 40 -> 60 (command-line override 'total_updates=60')" in log
    assert f"update 41 uses lr {expect[40]:.4g}" in log

def test_resume_without_a_change_is_bitwise_exact(tmp_path):
    "No change: a run resumed at update 20 ends with the weights of the run that was never stopped (two groups)."
    cfg = tiny_config(lr_scheduler=SCHEDULE, checkpoint=dict(save_every_epochs=1), progress=False,
                      optimizer=dict(weight_decay=0.1))
    ref = write_config(tmp_path / 'ref' / 'train.yml', cfg)
    train(ref)
    shutil.copytree(tmp_path / 'ref', tmp_path / 'moved')      # the run directory moved: its owner record still holds
    shutil.copy(tmp_path / 'moved' / 'epoch_1.pt', tmp_path / 'moved' / 'latest.pt')   # back to update 20
    t = train(tmp_path / 'moved' / 'train.yml')
    assert t.updates == 40
    assert 'config changed' not in (tmp_path / 'moved' / 'training.log').read_text()
    a = torch.load(tmp_path / 'ref' / 'latest.pt', weights_only=True)['model']
    b = torch.load(tmp_path / 'moved' / 'latest.pt', weights_only=True)['model']
    assert all(torch.equal(a[k], b[k]) for k in a)
    # optimizer.no_decay's default: a group without weight decay, resumed as saved, scheduled as the first one
    groups = torch.load(tmp_path / 'moved' / 'latest.pt', weights_only=True)['optimizer']['param_groups']
    assert [g['weight_decay'] for g in groups] == [0.1, 0.0] and groups[0]['lr'] == groups[1]['lr']
    lrs = fresh_lrs(ref)
    assert len(set(g['lr'] for g in t.optimizer.param_groups)) == 1
    assert [r['lr'] for r in read_rows(tmp_path / 'moved') if 'lr' in r][-4:] == pytest.approx(lrs[24::5], rel=1e-4)

@pytest.mark.parametrize('change, shown', [
    ('model.width=8', "model.width: 4 -> 8 (command-line override 'model.width=8')"),
    ('dataset.modes=3', "dataset.modes: 4 -> 3 (command-line override 'dataset.modes=3')"),
    ('seed=1', "seed: 0 -> 1 (command-line override 'seed=1')"),
    ('optimizer.no_decay=[]', "optimizer.no_decay [] (command-line override 'optimizer.no_decay=[]'): the checkpoint's "
                              "optimizer state groups the parameters by no_decay [\"ndim<2\"]")])
def test_a_change_a_run_cannot_make_is_refused_before_anything_is_written(tmp_path, change, shown):
    "(c), (d) model width, a dataset key, the seed: exit 2 with one paragraph and the ways on; the run dir untouched."
    path = write_config(tmp_path / 'run' / 'train.yml', tiny_config(total_updates=20, progress=False))
    assert cli(path)[0] == 0
    before = snapshot(tmp_path / 'run')
    code, err = cli(path, 'optimizer.learning_rate=1e-3', change)
    assert code == 2, err
    assert shown in err and 'Nothing was written' in err and err.count('\n') == 1, err
    assert f"checkpoint.path={tmp_path / 'run'} and checkpoint.restart=false" in err and 'another run_dir' in err
    assert 'Traceback' not in err and snapshot(tmp_path / 'run') == before

def test_fine_tuning_from_weights_does_not_compare_and_an_older_checkpoint_still_resumes(tmp_path):
    "restart: false + checkpoint.path is a new run: no comparison. A run dir from before the owner record is adopted."
    src = write_config(tmp_path / 'src' / 'train.yml', tiny_config(total_updates=20, progress=False))
    train(src)
    ft = write_config(tmp_path / 'ft' / 'train.yml', tiny_config(total_updates=10, seed=3, dataset=dict(modes=3),
                      checkpoint=dict(path=str(tmp_path / 'src'), restart=False), progress=False))
    assert train(ft).updates == 10
    assert 'config changed' not in (tmp_path / 'ft' / 'training.log').read_text()
    # an older run directory: no .owner.json, a checkpoint whose config lacks a key this version has
    (tmp_path / 'src' / '.owner.json').unlink()
    state = torch.load(tmp_path / 'src' / 'latest.pt', weights_only=True)
    del state['config']['dataset']['test_split']
    torch.save(state, tmp_path / 'src' / 'latest.pt')
    assert train(src, ['total_updates=30']).updates == 30
    log = (tmp_path / 'src' / 'training.log').read_text()
    assert 'adopts it' in log and "dataset.test_split <not set> -> \"test\"" in log
    assert json.loads((tmp_path / 'src' / '.owner.json').read_text()) == {'config': 'train.yml'}

def test_a_changed_batch_size_keeps_the_data_position_in_samples(tmp_path):
    path = write_config(tmp_path / 'run' / 'train.yml', tiny_config(total_updates=20, progress=False))
    train(path)   # 20 updates of 8 samples from 128: epoch 1, 4 batches (32 samples) into it
    t = train(path, ['batch_size=16', 'total_updates=20'])
    assert t.updates == 20 and 'batch 2 of epoch 1 in batches of 16' in (tmp_path / 'run' / 'training.log').read_text()

TINY = ['dataset.size=16', 'dataset.modes=4', 'dataset.num_samples=64', 'model.width=4', 'model.depth=1', 'batch_size=8',
        'total_updates=4', 'updates_per_epoch=2', 'log_every=2', 'lr_scheduler={}', 'progress=false', 'num_workers=0']

def test_two_copies_of_a_shipped_config_never_share_a_run_directory(tmp_path, monkeypatch):
    "Item 2: each copy trains into its own folder; a second config pointed at the first's run_dir is refused."
    monkeypatch.chdir(tmp_path)
    for shipped in ('quickstart.yml', 'unet_gpu.yml'):
        assert 'run_dir' not in __import__('yaml').safe_load((ROOT / 'configs' / shipped).read_text()), shipped
    a, b = tmp_path / 'exp_a' / 'train.yml', tmp_path / 'exp_b' / 'train.yml'
    for p in (a, b): p.parent.mkdir(); shutil.copy(ROOT / 'configs' / 'quickstart.yml', p)
    assert train(a, TINY).updates == 4
    assert train(b, TINY + ['optimizer.learning_rate=1e-3']).updates == 4
    assert (a.parent / 'latest.pt').is_file() and (b.parent / 'latest.pt').is_file() and not (tmp_path / 'runs').exists()
    assert json.loads((a.parent / '.owner.json').read_text()) == {'config': 'train.yml'}
    before = snapshot(a.parent)
    code, err = cli(b, *TINY, f'run_dir={a.parent}')
    assert code == 2 and 'belongs to another config' in err and str(a) in err and str(b) in err, err
    assert 'checkpoint.restart=false' in err and snapshot(a.parent) == before
    with pytest.raises(ConfigError, match='a dict config'):   # a dict is not the file that started it either
        train(__import__('yaml').safe_load(a.read_text()) | {'run_dir': str(a.parent)}, TINY)

def test_the_shipped_configs_folder_is_never_a_run_directory(tmp_path):
    "Item 2: `ml-suite-train configs/quickstart.yml` without run_dir is refused (configs/ holds templates); with it, trains."
    before = snapshot(ROOT / 'configs')
    code, err = cli(ROOT / 'configs' / 'quickstart.yml', *TINY)
    assert code == 2 and 'a folder of config templates' in err and 'run_dir=runs/quickstart' in err, err
    assert snapshot(ROOT / 'configs') == before
    assert cli(ROOT / 'configs' / 'quickstart.yml', *TINY, f'run_dir={tmp_path / "qs"}')[0] == 0
    assert (tmp_path / 'qs' / 'latest.pt').is_file() and snapshot(ROOT / 'configs') == before

def test_status_reports_the_update_a_rerun_resumes_from(tmp_path, capsys):
    "Item 10: the last metrics row and the newest good checkpoint's update, both."
    path = write_config(tmp_path / 'run' / 'train.yml', tiny_config(total_updates=20, updates_per_epoch=10, progress=False))
    train(path)
    (tmp_path / 'run' / 'latest.pt').write_bytes(b'damaged')        # a rerun falls back to previous.pt (update 10)
    assert status_main([str(tmp_path / 'run')]) == 0
    assert 'updates          20/20 (last row); a rerun resumes from update 10 (previous.pt)' in capsys.readouterr().out

def test_a_missing_epoch_checkpoint_names_save_every_epochs(tmp_path):
    path = write_config(tmp_path / 'run' / 'train.yml', tiny_config(checkpoint=dict(checkpoint_name=5)))
    code, err = cli(path)
    assert code == 2 and 'written only by checkpoint.save_every_epochs' in err and 'off (0)' in err, err

def test_a_config_error_under_torchrun_is_printed_once(tmp_path):
    bad = write_config(tmp_path / 'bad.yml', tiny_config(optimizer=dict(name='AdamW', learning_rat=1e-3)))
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '-m',
                        'ml_suite.train', str(bad)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode != 0
    assert r.stderr.count('ml-suite-train: error:') == 1, r.stderr

def test_precision_and_a_shorter_run_may_change_on_resume(tmp_path):
    "fp16 turned on at a resume (an empty saved scaler state); total_updates below the updates done: a warning."
    path = write_config(tmp_path / 'run' / 'train.yml', tiny_config(total_updates=20, progress=False))
    train(path)
    assert train(path, ['amp=true', 'precision=float16', 'total_updates=30']).updates == 30
    assert train(path, ['total_updates=10']).updates == 30
    log = (tmp_path / 'run' / 'training.log').read_text()
    assert "amp false -> true (command-line override 'amp=true')" in log and 'nothing to train' in log
