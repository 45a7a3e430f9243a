"""The one-node SLURM test harness (tests/slurm_cluster.py) against a real slurmctld + slurmd.

Each test checks one behaviour that ml_suite's SLURM support relies on: jobs run and write their output,
exit codes reach `scontrol` and `--dependency=afternotok`, `scancel --signal` reaches `srun` tasks (and with
`--batch` only the batch shell), and `scontrol requeue` from inside a job restarts it with SLURM_RESTART_COUNT.
All of them skip with the reason when SLURM is not installed (scripts/install_slurm.sh) or not root.
"""
import os, sys, textwrap, time
from pathlib import Path
import pytest
from slurm_cluster import SlurmCluster, parse_scontrol, slurm, slurm_available  # noqa: F401 (slurm is a fixture)


def write(path: Path, text: str, mode=0o755) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(mode)
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_parse_scontrol():
    d = parse_scontrol('JobId=7 JobName=a b JobState=COMPLETED ExitCode=3:0 Socks/Node=* ReqB:S:C:T=0:0:*:* '
                       'TRES=cpu=1,node=1 Command=/tmp/my job.sh')
    assert d == {'JobId': '7', 'JobName': 'a b', 'JobState': 'COMPLETED', 'ExitCode': '3:0', 'Socks/Node': '*',
                 'ReqB:S:C:T': '0:0:*:*', 'TRES': 'cpu=1,node=1', 'Command': '/tmp/my job.sh'}


def test_trivial_job_completes(slurm, tmp_path):
    script = write(tmp_path / 'hello.sh', '''
        #!/bin/bash
        echo "hello from job $SLURM_JOB_ID on $SLURMD_NODENAME, args: $*"
        ''')
    job = slurm.sbatch(script, 'a', 'b=1', extra_sbatch_args=[f'--output={tmp_path}/hello-%j.out'], cwd=tmp_path)
    info = slurm.wait_state(job, 'COMPLETED', timeout=30)
    assert info['ExitCode'] == '0:0' and info['WorkDir'] == str(tmp_path) and info['Restarts'] == '0'
    assert lines(tmp_path / f'hello-{job}.out') == [f'hello from job {job} on localhost, args: a b=1']


def test_exit_code_reaches_scontrol_and_afternotok(slurm, tmp_path):
    "ml_suite exits 3 when it stopped early with a checkpoint; a job chained with afternotok then runs."
    stop3 = write(tmp_path / 'stop3.sh', '#!/bin/bash\nexit 3\n')
    follow = write(tmp_path / 'follow.sh', '#!/bin/bash\necho "continued after $1"\n')
    first = slurm.sbatch(stop3, extra_sbatch_args=[f'--output={tmp_path}/first.out'])
    again = slurm.sbatch(follow, first, extra_sbatch_args=[f'--dependency=afternotok:{first}',
                                                            f'--output={tmp_path}/again.out'])
    never = slurm.sbatch(follow, first, extra_sbatch_args=[f'--dependency=afterok:{first}',
                                                            f'--output={tmp_path}/never.out'])
    info = slurm.wait_state(first, 'FAILED', timeout=30)
    assert info['ExitCode'] == '3:0'
    slurm.wait_state(again, 'COMPLETED', timeout=30)
    assert lines(tmp_path / 'again.out') == [f'continued after {first}']
    # A dependency that can no longer be met leaves the job pending for ever, unless --kill-on-invalid-dep=yes.
    never_info = slurm.wait_for(lambda: (i := slurm.job_info(never))['Reason'] == 'DependencyNeverSatisfied' and i,
                                timeout=15, message='afterok job to be marked DependencyNeverSatisfied')
    assert never_info['JobState'] == 'PENDING' and not (tmp_path / 'never.out').exists()
    slurm.scancel(never)
    slurm.wait_state(never, 'CANCELLED', timeout=15)
    done = slurm.sbatch(follow, again, extra_sbatch_args=[f'--dependency=afternotok:{again}', '--kill-on-invalid-dep=yes',
                                                          f'--output={tmp_path}/done.out'])
    slurm.wait_state(done, 'CANCELLED', timeout=15)
    assert not (tmp_path / 'done.out').exists()


def test_scancel_signal_reaches_srun_task(slurm, tmp_path):
    """`scancel --signal=USR1` reaches a Python task under `srun` (not the batch shell);
    `scancel --batch --signal=USR2` reaches the batch shell (not the srun task)."""
    write(tmp_path / 'handler.py', '''
        import os, signal, sys, time
        from pathlib import Path
        out = Path(sys.argv[1]); got = []
        def handler(signum, frame):
            got.append(signal.Signals(signum).name)
            with open(out / 'step_signals', 'a') as f: print(got[-1], os.environ['SLURM_STEP_ID'], file=f)
        signal.signal(signal.SIGUSR1, handler)   # first thing: a signal may come at once
        signal.signal(signal.SIGUSR2, handler)
        (out / 'step_ready').write_text(str(os.getpid()))
        end = time.monotonic() + 40
        while 'SIGUSR1' not in got and time.monotonic() < end: time.sleep(0.05)
        sys.exit(0 if 'SIGUSR1' in got else 1)
        ''', 0o644)
    script = write(tmp_path / 'step.sh', f'''
        #!/bin/bash
        OUT="$1"
        trap 'echo USR1 >> "$OUT/batch_signals"' USR1
        trap 'echo USR2 >> "$OUT/batch_signals"' USR2
        srun --ntasks=1 {sys.executable} "$OUT/handler.py" "$OUT" &
        pid=$!
        wait $pid; rc=$?                          # a trapped signal ends `wait` early: wait again
        while kill -0 $pid 2>/dev/null; do wait $pid; rc=$?; done
        echo "srun exited $rc"
        exit $rc
        ''')
    job = slurm.sbatch(script, tmp_path, extra_sbatch_args=[f'--output={tmp_path}/step.out'])
    slurm.wait_for(lambda: (tmp_path / 'step_ready').exists(), timeout=30, message='the srun task to start')
    slurm.scancel(job, signal='USR2', batch_only=True)
    slurm.wait_for(lambda: lines(tmp_path / 'batch_signals') == ['USR2'], timeout=10, message='USR2 in the batch shell')
    t = time.monotonic()
    slurm.scancel(job, signal='USR1')
    slurm.wait_for(lambda: lines(tmp_path / 'step_signals'), timeout=10, interval=0.01, message='USR1 in the srun task')
    delay = time.monotonic() - t
    info = slurm.wait_state(job, 'COMPLETED', timeout=20)
    assert lines(tmp_path / 'step_signals') == ['SIGUSR1 0'], 'the task got USR1 (in step 0), and never USR2'
    assert lines(tmp_path / 'batch_signals') == ['USR2'], 'the batch shell got USR2, and never USR1'
    assert lines(tmp_path / 'step.out') == ['srun exited 0'] and info['ExitCode'] == '0:0'
    assert delay < 5, f'USR1 took {delay:.1f} s to reach the task'


@pytest.mark.slow
def test_requeue_from_inside_job(slurm, tmp_path):
    "`scontrol requeue $SLURM_JOB_ID` in a job: same id, Restarts=1, SLURM_RESTART_COUNT=1, output appended."
    script = write(tmp_path / 'requeue.sh', '''
        #!/bin/bash
        #SBATCH --open-mode=append
        echo "start job=$SLURM_JOB_ID restart_count=${SLURM_RESTART_COUNT:-unset}"
        if [ -z "${SLURM_RESTART_COUNT:-}" ]; then
            scontrol requeue "$SLURM_JOB_ID"
            sleep 60                       # the requeue ends this run
            echo "not reached"
        fi
        echo "finished restart_count=$SLURM_RESTART_COUNT"
        ''')
    t = time.monotonic()
    job = slurm.sbatch(script, extra_sbatch_args=[f'--output={tmp_path}/requeue.out'])
    info = slurm.wait_state(job, 'COMPLETED', timeout=55)
    assert info['Restarts'] == '1' and info['ExitCode'] == '0:0' and info['Requeue'] == '1'
    out = lines(tmp_path / 'requeue.out')
    # slurmstepd adds its own line when it ends the first run: '... CANCELLED AT ... DUE TO JOB REQUEUE ***'
    assert [l for l in out if 'DUE TO JOB REQUEUE' in l] and len(out) == 4, out
    assert [l for l in out if not l.startswith('slurmstepd')] == [
        f'start job={job} restart_count=unset', f'start job={job} restart_count=1', 'finished restart_count=1']
    print(f'requeued job finished {time.monotonic() - t:.1f} s after submission')


def test_second_cluster_alongside_leaves_nothing_behind(slurm, tmp_path):
    "A second cluster gets its own ports and folder; stop() ends running jobs, their orphans and all daemons."
    with SlurmCluster() as other:
        assert set(other.ports.values()).isdisjoint(slurm.ports.values()) and other.root != slurm.root
        script = write(tmp_path / 'busy.sh', '''
            #!/bin/bash
            sleep 300 &                   # an orphan-to-be
            srun --ntasks=1 sleep 300
            ''')
        job = other.sbatch(script, extra_sbatch_args=[f'--output={tmp_path}/busy.out'])
        other.wait_state(job, 'RUNNING', timeout=30)
        other.wait_for(lambda: len(other.processes()) >= 8, timeout=15,
                       message='daemons, slurmstepd (batch and step), the script, srun and both sleeps')
        pids, root = other.processes(), other.root
    assert other.processes() == [] and not root.exists()
    left = [p for p in pids if Path(f'/proc/{p}').exists()]
    assert left == [], f'processes left (zombies?): {left}'
    assert slurm.run('sinfo', '-h', '-o', '%t').stdout.split() == ['idle'], 'the first cluster is unaffected'


def test_slurm_available_reason():
    ok, reason = slurm_available()
    assert isinstance(ok, bool) and (ok or 'SLURM' in reason)
