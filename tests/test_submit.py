"""ml-suite-submit without a cluster: the job scripts of `--dry-run` checked line by line (one node with 4 GPUs, two
nodes with 8 GPUs each, a CPU sweep), the refusals of bad slurm values and sweeps, and what a dry run leaves behind
(nothing). The SLURM runs are in tests/test_submit_slurm.py."""
import contextlib, io, os, shlex, subprocess, sys
from pathlib import Path
import pytest
from conftest import ROOT, tiny_config, write_config
from ml_suite.submit import main

QUICKSTART = ROOT / 'configs' / 'quickstart.yml'

def submit_cli(*args, cwd=None):
    "`ml-suite-submit ARGS` in this process (as fast as a test should be): its exit code, stdout and stderr."
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        os.chdir(cwd or here)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try: code = main([str(a) for a in args])
            except SystemExit as e: code = e.code
    finally: os.chdir(here)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())

def sbatch_options(script:str)->list[str]:
    "The `#SBATCH` options of a script, without their comments."
    return [l.split('#', 2)[1].split(None, 1)[1].split()[0] for l in script.splitlines() if l.startswith('#SBATCH')]

def test_one_node_four_gpus(tmp_path):
    run = tmp_path / 'runs' / 'quickstart'
    r = submit_cli(QUICKSTART, f'run_dir={run}', 'total_updates=20000', 'slurm.gpus_per_node=4', 'slurm.cpus_per_gpu=8',
                   'slurm.mem_per_gpu=64G', 'slurm.time=24:00:00', 'slurm.partition=gpu', 'slurm.account=my_account',
                   'slurm.extra=["--qos=normal"]', 'slurm.setup=["module load cuda/12.4"]', '--dry-run', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = r.stdout
    assert sbatch_options(s) == ['--job-name=quickstart', '--nodes=1', '--ntasks-per-node=1', '--gpus-per-node=4',
                                 '--cpus-per-task=32', '--mem-per-gpu=64G', '--time=24:00:00', '--signal=USR1@180',
                                 '--requeue', '--open-mode=append', f'--output={run}/slurm-%j.out',
                                 '--partition=gpu', '--account=my_account', '--qos=normal']
    lines = s.splitlines()
    assert lines[0] == '#!/bin/bash'
    body = lines[lines.index('set -euo pipefail'):]
    assert body[body.index('# slurm.setup') + 1] == 'module load cuda/12.4'
    assert f'cd {tmp_path}' in body
    assert f'PYTHON={sys.executable}' in body
    assert 'if [ -f .env ]; then set -a; source .env; set +a; fi' in body
    assert 'export ML_SUITE_MAX_REQUEUES=20' in body
    args = next(l for l in body if l.startswith('ARGS=('))
    # the training's own arguments: the config, the overrides (not the slurm section's), the run directory
    assert shlex.split(args[len('ARGS=('):-1]) == [str(QUICKSTART), 'total_updates=20000', f'run_dir={run}']
    launch = body[-3:]
    assert launch == ['exec srun --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \\',
                      """    bash -c 'trap "" USR1 USR2 TERM; exec "$@"' ml_suite \\""",
                      '    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=4 -m ml_suite.train '
                      '"${ARGS[@]}"']
    assert not (tmp_path / 'runs').exists()          # a dry run writes nothing

def test_two_nodes_eight_gpus_rendezvous_on_the_first_node(tmp_path):
    r = submit_cli(QUICKSTART, f'run_dir={tmp_path}/big', 'slurm.nodes=2', 'slurm.gpus_per_node=8',
                   'slurm.cpus_per_gpu=12', 'slurm.time="2-00:00:00"', 'slurm.signal_seconds=300', '--dry-run')
    assert r.returncode == 0, r.stderr
    opts = sbatch_options(r.stdout)
    assert opts[:5] == ['--job-name=big', '--nodes=2', '--ntasks-per-node=1', '--gpus-per-node=8', '--cpus-per-task=96']
    assert '--time=2-00:00:00' in opts and '--signal=USR1@300' in opts
    body = r.stdout.splitlines()
    assert body[-4:] == ['HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                         'exec srun --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" '
                         '--kill-on-bad-exit=1 \\',
                         """    bash -c 'trap "" USR1 USR2 TERM; exec "$@"' ml_suite \\""",
                         '    "$PYTHON" -m torch.distributed.run --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d '
                         '--rdzv_endpoint="$HEAD_NODE:29500" --rdzv_id="$SLURM_JOB_ID" -m ml_suite.train "${ARGS[@]}"']

def test_the_signal_follows_the_config(tmp_path):
    r = submit_cli(QUICKSTART, f'run_dir={tmp_path}/a', 'preemption.requeue_signals=[SIGUSR2]', '--dry-run')
    assert '--signal=USR2@180' in sbatch_options(r.stdout)
    # one process in all: srun starts Python itself, no torchrun
    assert r.stdout.splitlines()[-1] == ('exec srun --ntasks=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" "$PYTHON" '
                                         '-m ml_suite.train "${ARGS[@]}"')

def test_a_sweep_is_one_job_array_with_a_case_per_task(tmp_path):
    r = submit_cli(QUICKSTART, f'run_dir={tmp_path}/qs', '--sweep', 'optimizer.learning_rate=1e-3,3e-4,1e-4',
                   '--sweep', 'model.width=16,32', '--max-parallel', '2', 'slurm.processes_per_node=2', '--dry-run')
    assert r.returncode == 0, r.stderr
    opts = sbatch_options(r.stdout)
    assert '--array=0-5%2' in opts and f'--output={tmp_path}/sweep_qs/slurm-%A_%a.out' in opts
    assert '--cpus-per-task=2' in opts          # CPU nodes: one core per process
    cases = [l.strip() for l in r.stdout.splitlines() if l.strip()[:2] in {f'{i})' for i in range(6)}]
    assert len(cases) == 6
    first = shlex.split(cases[0][len('0) ARGS=('):-len(') ;;')])
    assert first == [str(QUICKSTART), 'optimizer.learning_rate=1e-3', 'model.width=16',
                     f'run_dir={tmp_path}/sweep_qs/learning_rate=1e-3,width=16']
    assert 'learning_rate=1e-4,width=32' in cases[5]
    assert '--standalone --nproc_per_node=2' in r.stdout
    assert not (tmp_path / 'sweep_qs').exists()

def test_only_some_tasks_of_a_sweep(tmp_path):
    r = submit_cli(QUICKSTART, f'run_dir={tmp_path}/qs', '--sweep', 'seed=0,1,2', '--tasks', '1,2', '--dry-run')
    assert '--array=1,2' in sbatch_options(r.stdout)
    r = submit_cli(QUICKSTART, f'run_dir={tmp_path}/qs', '--sweep', 'seed=0,1,2', '--tasks', '3', '--dry-run')
    assert r.returncode == 2 and 'give task numbers from 0 to 2' in r.stderr

@pytest.mark.parametrize('args, words', [
    (['slurm.time="2"', 'slurm.signal_seconds=180'], 'so it would arrive before the job starts'),
    (['slurm.cpus_per_gpu=8'], "it applies to GPU nodes, and gpus_per_node is 0"),
    (['slurm.gpus_per_node=4', 'slurm.processes_per_node=2'], 'one training process per GPU'),
    (['slurm.time="one day"'], 'give the time limit as sbatch takes it'),
    (['slurm.extra=[qos=normal]'], "'qos=normal' is not an sbatch option"),
    (['--sweep', 'optimizer.learning_rate'], 'is not KEY=V1,V2'),
    (['--sweep', 'run_dir=a,b'], 'run_dir cannot vary within a sweep'),
    (['--sweep', 'optimizer.learning_rate=1e-3,fast'], "optimizer.learning_rate=fast"),
    (['--max-parallel', '2'], 'apply to a sweep'),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, args, words):
    r = submit_cli(QUICKSTART, f'run_dir={tmp_path}/x', *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith('ml-suite-submit: error: ') and words in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1          # one paragraph
    assert not list(tmp_path.iterdir())

def test_a_sweep_file(tmp_path):
    (tmp_path / 'tasks.yml').write_text('- {optimizer.learning_rate: 1.0e-3, model.width: 16}\n'
                                        '- {optimizer.learning_rate: 3.0e-4, total_updates: 800}\n')
    r = submit_cli(QUICKSTART, f'run_dir={tmp_path}/qs', '--sweep-file', tmp_path / 'tasks.yml', '--dry-run')
    assert r.returncode == 0, r.stderr
    assert '--array=0-1' in sbatch_options(r.stdout)
    assert "run_dir=$(echo" not in r.stdout and 'learning_rate=0.0003,total_updates=800' in r.stdout

def test_without_sbatch_submit_says_how_to_run_locally(tmp_path, monkeypatch):
    path = write_config(tmp_path / 'train.yml', tiny_config(total_updates=10))
    monkeypatch.setenv('PATH', str(Path(sys.executable).parent))     # a machine without SLURM's commands
    r = submit_cli(path)
    assert r.returncode == 1 and 'sbatch is not on PATH here' in r.stderr and '--local' in r.stderr, r.stderr
    assert not list(tmp_path.glob('*.sbatch*')) and not (tmp_path / 'starts.jsonl').exists()
