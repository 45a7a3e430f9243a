"""Sharded checkpoints of `strategy: fsdp` runs, with real torchrun processes on CPU (gloo): a resume with another
number of processes (2 -> 1, 1 -> 2) starts from exactly the saved weights, a truncated shard falls back to
previous/ with a warning naming it, and SIGKILLs of the whole torchrun at random moments (inside a save, an async
save and a validation) end, after reruns, bitwise where an uninterrupted run ends."""
import os, random, signal, subprocess, sys, threading, time
from pathlib import Path
import pytest, torch
from conftest import tiny_config, write_config, run_cli, read_rows
from test_distributed import torchrun
from ml_suite.checkpoint import load_sharded_full

def fsdp_config(**over):
    return tiny_config(**{'total_updates': 40, 'updates_per_epoch': 10, 'log_every': 10, 'strategy': 'fsdp',
                          'fsdp': {'wrap': ['ConvBlock']}, **over})

def train2(cfg_path, cwd, **kw):
    r = torchrun('--standalone', '--nproc_per_node=2', '-m', 'ml_suite.train', cfg_path, *kw.pop('args', ()), cwd=cwd,
                 **kw)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r

def train1(cfg_path, cwd, *args):
    r = run_cli(cfg_path, *args, cwd=cwd)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r

def assert_tree_equal(a, b, path=''):
    if isinstance(a, dict):
        assert sorted(map(str, a)) == sorted(map(str, b)), path
        for k in a: assert_tree_equal(a[k], b[k], f'{path}/{k}')
    elif torch.is_tensor(a): assert torch.equal(a, b), path
    else: assert a == b, path

def resumed_weights_equal_saved(tmp_path, first, then):
    "Train 20 updates with `first`, resume to 40 with `then` (train1/train2): the checkpoint and the run directory."
    run = tmp_path / 'run'
    first(write_config(run / 'train.yml', fsdp_config(total_updates=20)), tmp_path)
    saved = load_sharded_full(run / 'latest')
    assert saved['extra']['updates'] == 20
    # a callback that writes the weights at the start of the resumed fit
    (tmp_path / 'peek.py').write_text(PEEK)
    cfg = fsdp_config(callbacks=[{'name': 'peek:Peek'}])
    then(write_config(run / 'train.yml', cfg), tmp_path)
    return saved, run

PEEK = '''
import torch, torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_model_state_dict, StateDictOptions
from ml_suite.callbacks import Callback
class Peek(Callback):
    "Write the full weights the run starts its fit with (rank 0), to compare with the checkpoint's."
    def on_fit_start(self, trainer):
        sd = get_model_state_dict(trainer.raw_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if trainer.dist.is_main: torch.save(sd, trainer.run_dir / 'at_resume.pt')
'''

def test_two_process_checkpoint_resumed_by_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv('PYTHONPATH', str(tmp_path))
    saved, run = resumed_weights_equal_saved(tmp_path, train2, train1)
    assert_tree_equal(saved['model'], torch.load(run / 'at_resume.pt', weights_only=True))
    log = (run / 'training.log').read_text()
    assert 'resuming a 2-process checkpoint with 1 processes' in log and 'update 40/40' in log
    assert load_sharded_full(run / 'latest')['extra']['world_size'] == 1

def test_one_process_checkpoint_resumed_by_two_processes(tmp_path, monkeypatch):
    monkeypatch.setenv('PYTHONPATH', str(tmp_path))
    saved, run = resumed_weights_equal_saved(tmp_path, train1, train2)
    assert_tree_equal(saved['model'], torch.load(run / 'at_resume.pt', weights_only=True))
    log = (run / 'training.log').read_text()
    assert 'resuming a 1-process checkpoint with 2 processes' in log and 'update 40/40' in log
    assert sorted(p.name for p in (run / 'latest').glob('*.distcp')) == ['__0_0.distcp', '__1_0.distcp']

def test_a_truncated_shard_of_latest_falls_back_to_previous(tmp_path):
    run = tmp_path / 'run'
    cfg_path = write_config(run / 'train.yml', fsdp_config(total_updates=30))
    train2(cfg_path, tmp_path)
    assert load_sharded_full(run / 'previous')['extra']['updates'] == 20
    shard = run / 'latest' / '__1_0.distcp'
    shard.write_bytes(shard.read_bytes()[:100])
    r = train2(write_config(run / 'train.yml', fsdp_config(total_updates=40)), tmp_path)
    log = (run / 'training.log').read_text()
    assert f'checkpoint {run / "latest"} is damaged and is skipped' in log and '__1_0.distcp is 100 bytes' in log
    assert f'resumed from {run / "previous"} at update 20/40' in log
    assert load_sharded_full(run / 'latest')['extra']['updates'] == 40

def test_a_ddp_run_directory_is_refused_by_strategy_fsdp(tmp_path):
    run = tmp_path / 'run'
    train1(write_config(run / 'train.yml', tiny_config(total_updates=10, updates_per_epoch=10)), tmp_path)
    r = run_cli(write_config(run / 'train.yml', fsdp_config(total_updates=20)), cwd=tmp_path)
    assert r.returncode == 2
    assert 'strategy (' in r.stderr or 'strategy is fsdp' in r.stderr, r.stderr
    assert 'holds checkpoints of a strategy ddp (or one process) run (latest.pt)' in r.stderr
