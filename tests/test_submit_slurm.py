"""ml-suite-submit on a real one-node SLURM (tests/slurm_cluster.py): the quickstart with a 2-minute job requeues
itself at its time limit and after a USR1, and ends bitwise equal to an uninterrupted run; a sweep of 3 tasks with
--max-parallel 2 where one preempted task requeues alone; ml-suite-status and ml-suite-plot over the sweep; what
sinfo and sbatch --test-only refuse before anything is submitted."""
import json, os, re, shutil, subprocess, sys, time
from pathlib import Path
import pytest, torch
from conftest import ROOT, tiny_config, write_config, read_rows
from slurm_cluster import slurm  # noqa: F401  (the fixture)
from test_slurm_train import SLEEPY

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent

def cli(slurm, name, *args, cwd, timeout=120):
    r = subprocess.run([str(BIN / name), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                       env=slurm.env(OMP_NUM_THREADS=1), timeout=timeout)
    return r

def job_id(out:str)->str:
    m = re.search(r'submitted SLURM job (\d+)', out)
    assert m, out
    return m[1]

def ends(run_dir:Path)->list[str]:
    p = run_dir / 'ends.jsonl'
    return [json.loads(l)['outcome'] for l in p.read_text().splitlines()] if p.exists() else []

def updates_at_least(run_dir:Path, n:int):
    return lambda: (run_dir / 'metrics.jsonl').exists() and any(r['update'] >= n for r in read_rows(run_dir))

def test_the_quickstart_requeues_at_its_time_limit_and_after_usr1_and_equals_an_uninterrupted_run(slurm, tmp_path):
    "slurm.time of 2 minutes, no time_limit in the config: ml_suite reads the job's end time and requeues itself."
    shutil.copy(ROOT / 'configs' / 'quickstart.yml', tmp_path / 'quickstart.yml')
    (tmp_path / 'sleepy.py').write_text(SLEEPY)
    # the quickstart's UNet, paced (it sleeps 0.1 s in each training forward), so that the run outlasts a 2-minute job
    common = ['model.type=sleepy:SleepyUNet', 'model.sleep=0.1', 'total_updates=1000', 'updates_per_epoch=100',
              'log_every=50', 'progress=false']
    ref = subprocess.Popen([str(BIN / 'ml-suite-train'), 'quickstart.yml', f'run_dir={tmp_path}/ref', *common],
                           cwd=tmp_path, env={**os.environ, 'OMP_NUM_THREADS': '1'}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        r = cli(slurm, 'ml-suite-submit', 'quickstart.yml', f'run_dir={tmp_path}/job', *common, 'slurm.time="2"',
                'slurm.signal_seconds=30', cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        job, run = job_id(r.stdout), tmp_path / 'job'
        script = run / f'submit-{job}.sbatch'
        assert script.is_file() and '#SBATCH --time=2' in script.read_text()
        sub = json.loads((run / 'starts.jsonl').read_text().splitlines()[0])
        assert sub['job_id'] == job and sub['script'] == str(script) and len(sub['script_sha256']) == 64
        slurm.wait_for(updates_at_least(run, 100), timeout=180, message='100 updates')
        slurm.scancel(job, signal='USR1')
        info = slurm.wait_state(job, 'COMPLETED', timeout=600)
        assert ref.wait(timeout=600) == 0, ref.stderr.read()[-3000:]
    finally:
        if ref.poll() is None: ref.kill()
    log = (run / f'slurm-{job}.out').read_text()
    # one requeue after the USR1 sent here, one or more at the 2-minute limit: the job's own time keeper (time limit)
    # or the --signal warning (SIGUSR1 again), whichever comes first
    restarts = int(info['Restarts'])
    assert restarts >= 2 and 'time limit: 2.0 min for this job' in log, (info, log[-3000:])
    assert log.count('saving a checkpoint') == log.count(f'requeued SLURM job {job};') == restarts, log[-3000:]
    assert 'finished 1000 updates' in log
    killed = [l for l in log.splitlines() if ('CANCELLED' in l or 'TIME LIMIT' in l) and 'DUE TO JOB REQUEUE' not in l]
    assert not killed, killed                       # SLURM never had to end it: each job stopped by itself
    assert ends(run)[-1] == 'finished' and ends(run).count('requeued') >= 2, ends(run)
    a = torch.load(tmp_path / 'ref' / 'latest.pt', weights_only=True)
    b = torch.load(run / 'latest.pt', weights_only=True)
    assert a['updates'] == b['updates'] == 1000
    for k in a['model']: assert torch.equal(a['model'][k], b['model'][k]), k
    updates = [r['update'] for r in read_rows(run)]
    assert updates == sorted(set(updates))          # the resumed jobs repeat no row

def status_json(slurm, sweep:Path, cwd)->list[dict]:
    r = cli(slurm, 'ml-suite-status', sweep, '--json', cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)

def test_a_sweep_of_three_with_two_at_once_where_one_preempted_task_requeues_alone(slurm, tmp_path):
    (tmp_path / 'sleepy.py').write_text(SLEEPY)
    cfg = tiny_config(model=dict(type='sleepy:SleepyUNet', width=4, depth=1, sleep=0.1), total_updates=250,
                      updates_per_epoch=50, log_every=25, progress=False)
    path = write_config(tmp_path / 'train.yml', cfg)
    r = cli(slurm, 'ml-suite-submit', path, f'run_dir={tmp_path}/lr', '--sweep', 'optimizer.learning_rate=1e-3,3e-3,1e-2',
            '--max-parallel', '2', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    array, sweep = job_id(r.stdout), tmp_path / 'sweep_lr'
    man = json.loads((sweep / 'sweep.json').read_text())
    runs = [Path(t['run_dir']) for t in man['tasks']]
    assert [p.name for p in runs] == ['learning_rate=1e-3', 'learning_rate=3e-3', 'learning_rate=1e-2']
    assert man['jobs'][0]['job_id'] == array and man['max_parallel'] == 2
    slurm.wait_for(updates_at_least(runs[1], 50), timeout=180, message='task 1 at update 50')
    rows = status_json(slurm, sweep, tmp_path)
    # two at once: the third task waits in the queue
    assert sorted(r['state'] for r in rows) == ['queued', 'running', 'running'], rows
    assert [r['job_id'] for r in rows] == [f'{array}_{i}' for i in range(3)]
    assert all('learning_rate' in json.dumps(r) for r in rows)
    slurm.scancel(f'{array}_1', signal='USR1')
    slurm.wait_for(lambda: 'requeued' in ends(runs[1]), timeout=120, message='task 1 requeued')
    for i in range(3): slurm.wait_state(f'{array}_{i}', 'COMPLETED', timeout=420)
    restarts = [int(slurm.job_info(f'{array}_{i}')['Restarts']) for i in range(3)]
    assert restarts == [0, 1, 0], restarts
    assert [ends(p) for p in runs] == [['finished'], ['requeued', 'finished'], ['finished']]
    log1 = (sweep / f'slurm-{array}_1.out').read_text()
    assert f'requeued SLURM job {array}_1' in log1 and 'resumed from' in log1, log1[-2000:]
    for p in runs: assert torch.load(p / 'latest.pt', weights_only=True)['updates'] == 250
    rows = status_json(slurm, sweep, tmp_path)
    assert [r['state'] for r in rows] == ['finished'] * 3, rows
    table = cli(slurm, 'ml-suite-status', sweep, cwd=tmp_path)
    assert table.returncode == 0 and table.stdout.count('finished') >= 3, table.stdout
    out = tmp_path / 'sweep.png'
    r = cli(slurm, 'ml-suite-plot', sweep, '-o', out, cwd=tmp_path)
    assert r.returncode == 0 and out.stat().st_size > 10_000, r.stderr

def test_what_the_cluster_cannot_run_is_refused_before_submission(slurm, tmp_path):
    path = write_config(tmp_path / 'train.yml', tiny_config(total_updates=10))
    before = set(slurm.job_ids())
    def submit(*args):
        r = cli(slurm, 'ml-suite-submit', path, f'run_dir={tmp_path}/a', *args, cwd=tmp_path)
        return r.returncode, r.stderr
    code, err = submit('slurm.gpus_per_node=4')
    assert code == 1 and 'slurm.gpus_per_node is 4, but the nodes of' in err and 'at most 0 GPUs' in err, err
    code, err = submit('slurm.partition=nope')
    assert code == 1 and "partition 'nope' does not exist here" in err, err
    code, err = submit('slurm.extra=["--constraint=v100"]')     # a node feature this cluster lacks
    assert code == 1 and 'sbatch --test-only refused the job' in err and 'Invalid feature' in err, err
    assert not (tmp_path / 'a').exists() or not list((tmp_path / 'a').glob('submit-*'))
    assert set(slurm.job_ids()) == before                         # nothing was submitted
    # the shape this node can run: two processes (torchrun) on its 2 cores; --test-only accepts it, sbatch runs it
    r = cli(slurm, 'ml-suite-submit', path, f'run_dir={tmp_path}/b', 'slurm.processes_per_node=2', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    slurm.wait_state(job_id(r.stdout), 'COMPLETED', timeout=180)
    assert ends(tmp_path / 'b') == ['finished']
