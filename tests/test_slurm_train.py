"""ml_suite on a real one-node SLURM: a job's own time limit stops the run in time and it finishes after the requeue;
srun with and without torchrun; the hand-written job scripts of scripts/slurm/."""
import os, sys, time
from pathlib import Path
import pytest, torch
from conftest import tiny_config, write_config, run_cli, read_rows
from slurm_cluster import slurm  # noqa: F401  (the fixture)

SLEEPY = '''
import time
from ml_suite.models import UNet

class SleepyUNet(UNet):
    "The built-in UNet, paced: each training forward pass sleeps, so a job lasts long enough to be signalled."
    def __init__(self, sleep=0.02, **kw):
        super().__init__(**kw); self.sleep = sleep
    def forward(self, x):
        if self.training: time.sleep(self.sleep)
        return super().forward(x)
'''

def job_script(path, body, sbatch=()):
    lines = ['#!/bin/bash', '#SBATCH --open-mode=append', '#SBATCH --requeue', *[f'#SBATCH {a}' for a in sbatch],
             'set -eu', f'cd {path.parent}', body]
    path.write_text('\n'.join(lines) + '\n')
    return path

def sleepy_config(**over):
    cfg = tiny_config(model=dict(type='sleepy:SleepyUNet', width=4, depth=1, sleep=0.02), **over)
    return cfg

def setup(tmp_path, name, cfg):
    run = tmp_path / name
    run.mkdir(parents=True)
    (run / 'sleepy.py').write_text(SLEEPY)
    return write_config(run / 'train.yml', cfg)

# A USR1 mid-run that saves, requeues and resumes to the weights of an uninterrupted run: tests/test_submit_slurm.py
# (the quickstart, submitted with ml-suite-submit), which checks that and the time limit in one job.

@pytest.mark.slow
def test_job_time_limit_stops_in_time_and_finishes_after_requeue(slurm, tmp_path):
    "--time=2 and no time_limit in the config: the run reads SLURM's end time, stops before it, requeues, finishes."
    cfg = sleepy_config(total_updates=1500, updates_per_epoch=250, log_every=50)
    cfg['model']['sleep'] = 0.1                     # about 150 s of training: more than one 2-minute job
    path = setup(tmp_path, 'job', cfg)
    script = job_script(tmp_path / 'job.sh', f'srun --ntasks=1 {sys.executable} -m ml_suite.train {path}', sbatch=['--time=2'])
    out = tmp_path / 'job.out'
    job = slurm.sbatch(script, extra_sbatch_args=[f'--output={out}'])
    info = slurm.wait_state(job, 'COMPLETED', timeout=420)
    text = out.read_text()
    assert info['Restarts'] == '1', (info, text)
    assert 'time limit: ' in text and '(time limit); saving a checkpoint' in text, text
    killed = [l for l in text.splitlines() if ('CANCELLED' in l or 'TIME LIMIT' in l) and 'DUE TO JOB REQUEUE' not in l]
    assert not killed, killed                       # SLURM never had to end a run: each stopped by itself
    assert f'requeued SLURM job {job}' in text and 'finished 1500 updates' in text, text
    assert torch.load(path.parent / 'latest.pt', weights_only=True)['updates'] == 1500

@pytest.mark.slow
@pytest.mark.parametrize('strategy', ['ddp', 'fsdp'])
def test_srun_two_tasks_without_torchrun(slurm, tmp_path, strategy):
    path = setup(tmp_path, 'job', tiny_config(total_updates=20, updates_per_epoch=10, strategy=strategy))
    script = job_script(tmp_path / 'job.sh', f'srun --ntasks=2 {sys.executable} -m ml_suite.train {path}', sbatch=['--ntasks=2'])
    job = slurm.sbatch(script, extra_sbatch_args=[f'--output={tmp_path}/job.out'])
    slurm.wait_state(job, 'COMPLETED', timeout=180)
    log = (path.parent / 'training.log').read_text()
    assert '2 process(es)' in log and 'finished 20 updates' in log, log
    if strategy == 'fsdp':
        assert '(fsdp, 2 shards)' in log, log
        assert sorted(p.name for p in (path.parent / 'latest').glob('*.distcp')) == ['__0_0.distcp', '__1_0.distcp']

# 8 s, over the default run's budget: tests/test_submit_slurm.py's 2-process job runs torchrun under srun too
@pytest.mark.slow
def test_srun_with_torchrun_two_processes(slurm, tmp_path):
    path = setup(tmp_path, 'job', tiny_config(total_updates=20, updates_per_epoch=10))
    body = (f'srun --ntasks=1 --cpus-per-task=2 {sys.executable} -m torch.distributed.run --standalone --nproc_per_node=2 '
            f'-m ml_suite.train {path}')
    script = job_script(tmp_path / 'job.sh', body, sbatch=['--ntasks=1', '--cpus-per-task=2'])
    job = slurm.sbatch(script, extra_sbatch_args=[f'--output={tmp_path}/job.out'])
    slurm.wait_state(job, 'COMPLETED', timeout=180)
    log = (path.parent / 'training.log').read_text()
    assert '2 process(es)' in log and 'finished 20 updates' in log, log


# -- the job scripts from a fresh clone (issue 16, item 9) ------------------------------------------------------------
import shutil, subprocess
from conftest import ROOT

def fresh_clone(tmp_path) -> Path:
    "The repository's files as a fresh clone has them (tracked or addable; no logs/*.out), plus its .venv, as `uv sync` makes it."
    clone = tmp_path / 'clone'
    files = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', 'scripts', 'logs', 'configs'],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        (clone / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, clone / f)
    (clone / ".venv").symlink_to(ROOT / ".venv")
    return clone

def unactivated_env(slurm, **extra) -> dict:
    "The submitting shell of a new user: no VIRTUAL_ENV, no venv's bin on PATH."
    env = slurm.env(**extra)
    env.pop('VIRTUAL_ENV', None)
    venv_bins = {str(ROOT / '.venv' / 'bin'), str(Path(sys.executable).parent)}
    env['PATH'] = ':'.join(p for p in env['PATH'].split(':') if p not in venv_bins and '.venv' not in p)
    return env

def submit_script(slurm, clone, config, *sbatch_args, env=None) -> int:
    cmd = ['sbatch', '--parsable', '--gres=none', '--cpus-per-task=1', *sbatch_args,
           'scripts/slurm/single_node.sbatch', str(config)]
    r = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip().split(';')[0])

def script_job(slurm, tmp_path, cfg, *sbatch_args):
    "A fresh clone with the sleepy model, and the job script submitted from its root, as the README says."
    clone = fresh_clone(tmp_path)
    assert not list((clone / 'logs').glob('*.out'))
    exp = clone / 'exp'
    exp.mkdir()
    (exp / 'sleepy.py').write_text(SLEEPY)
    path = write_config(exp / 'train.yml', {**cfg, 'run_dir': str(exp)})
    env = unactivated_env(slurm, GPUS=1, OMP_NUM_THREADS=1)
    assert shutil.which('torchrun', path=env['PATH']) is None, 'the venv is not on PATH, as for a new user'
    job = submit_script(slurm, clone, 'exp/train.yml', *sbatch_args, env=env)
    return job, clone / 'logs' / f'ml_suite-{job}.out', exp

def test_job_script_from_a_fresh_clone_trains_to_the_end(slurm, tmp_path):
    "No `mkdir -p logs`, no activated venv: before, JobLaunchFailure and then `execve(): torchrun: No such file`."
    job, log, exp = script_job(slurm, tmp_path, tiny_config(total_updates=20, updates_per_epoch=10))
    info = slurm.wait_state(job, 'COMPLETED', timeout=180)
    text = log.read_text()
    assert 'finished 20 updates' in text and info['ExitCode'] == '0:0', text
    assert 'Traceback' not in text and 'SignalException' not in text, text

@pytest.mark.slow
def test_job_script_requeues_without_torchrun_tracebacks(slurm, tmp_path):
    "The script's job, signalled: it saves, requeues and finishes; neither torchrun nor ml_suite prints a traceback."
    job, log, exp = script_job(slurm, tmp_path, sleepy_config(total_updates=200, updates_per_epoch=50))
    slurm.wait_for(lambda: (exp / 'metrics.jsonl').exists() and any(r['update'] >= 40 for r in read_rows(exp)),
                   timeout=120, message='40 updates')
    slurm.scancel(job, signal='USR1')
    info = slurm.wait_state(job, 'COMPLETED', timeout=240)
    text = log.read_text()
    assert info['Restarts'] == '1', (info, text)
    assert f'requeued SLURM job {job}' in text and 'resumed from' in text and 'finished 200 updates' in text, text
    assert 'SignalException' not in text and 'Traceback' not in text and 'death signal' not in text, text

@pytest.mark.slow
def test_a_job_too_short_for_its_warning_does_not_requeue_itself(slurm, tmp_path):
    "--time=2 with the script's --signal=USR1@120: before, 14 requeues in 7 minutes without training; now one stop."
    job, log, exp = script_job(slurm, tmp_path, sleepy_config(total_updates=100000, updates_per_epoch=1000), '--time=2')
    info = slurm.wait_state(job, 'FAILED', timeout=400)
    text = log.read_text()
    assert info['Restarts'] in ('0', '1'), (info, text)
    assert 'It is not requeued' in text and '--time=2 gives 120 s; --signal=USR1@120 asks for the warning 120 s' in text, text
    assert 'raise --time or lower the @ value of --signal' in text, text
    assert 'SignalException' not in text, text
    assert (exp / 'latest.pt').exists()
