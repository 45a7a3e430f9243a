"""ml_suite.runs (issue 20): the state of runs from their files and the queue, the status table, ml-suite-status
(one run, many, a sweep, --json, a bad path), watch outside Jupyter, ml-suite-plot over a sweep, and queue_info
against a real one-node SLURM (slow)."""
import json, os, shutil, socket, subprocess, sys, textwrap, time
from pathlib import Path
import pytest
from conftest import tiny_config, write_config, run_cli
from slurm_cluster import slurm  # noqa: F401  (the fixture)
from ml_suite.runs import (run_state, status_table, format_table, status_main, watch, queue_info, expand_runs,
                           FINAL_STATES)
from ml_suite.plot import main as plot_main

BIN = Path(sys.executable).parent
STAMP = '%Y-%m-%dT%H:%M:%S%z'


def stamp(seconds=0.0): return time.strftime(STAMP, time.localtime(time.time() + seconds))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A real finished run (20 updates) trained by `python -m ml_suite.train`, copied by the tests."
    d = tmp_path_factory.mktemp('trained') / 'run'
    path = write_config(d / 'train.yml', tiny_config(total_updates=20, updates_per_epoch=10, progress=False))
    r = run_cli(path, cwd=d.parent, env={'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr
    return d


def copy_run(trained, dest: Path) -> Path:
    "A copy of the trained run; the ends.jsonl (if this version's training wrote one) is the test's to write."
    shutil.copytree(trained, dest)
    (dest / 'ends.jsonl').unlink(missing_ok=True)
    return dest


def append(path: Path, line: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'a') as f: f.write(json.dumps(line) + '\n')


def submit_line(run_dir: Path, job_id='123_1', where='slurm', pid=None, overrides=('optimizer.learning_rate=1e-3',)):
    "The line ml_suite.submit appends to starts.jsonl (the SPEC's format)."
    append(run_dir / 'starts.jsonl', {
        'submitted': stamp(), 'where': where, 'job_id': job_id, 'array_job_id': job_id and job_id.split('_')[0],
        'task': 1, 'pid': pid, 'host': socket.gethostname(), 'script': str(run_dir / 'submit-123.sbatch'),
        'script_sha256': '0' * 64, 'config': str(run_dir / 'train.yml'),
        'overrides': [*overrides, f'run_dir={run_dir}'], 'sweep': None})


def start_line(run_dir: Path, seconds=0.0): append(run_dir / 'starts.jsonl', {'time': stamp(seconds), 'argv': ['x']})


def end_line(run_dir: Path, outcome, **kw):
    "One ends.jsonl line as training writes it at its end (the SPEC's format), a second after now."
    (run_dir / 'ends.jsonl').write_text(json.dumps({'time': stamp(1), 'outcome': outcome, 'updates': 20,
                                                    'job_id': None, 'pid': 4567, **kw}) + '\n')


def q(state, restarts=0, reason='', exit_code='0:0'):
    return {'state': state, 'restarts': restarts, 'reason': reason, 'exit_code': exit_code}


def state_of(run_dir, queue): return tuple(run_state(run_dir, queue)[k] for k in ('state', 'reason'))


def test_state_from_the_files_of_real_runs(trained, tmp_path):
    "finished / stopped early / stopped / failed / killed, with and without a submission, and a run without ends.jsonl."
    old = copy_run(trained, tmp_path / 'old')          # a run from before ends.jsonl: read from its checkpoints
    st = run_state(old, {})
    assert (st['state'], st['updates'], st['total_updates'], st['job_id'], st['overrides']) == ('finished', 20, 20,
                                                                                                 None, None)
    assert st['best_val_loss'] is not None and st['best_update'] in (10, 20) and st['eta_s'] is None
    cases = [('finished', {}, ('finished', '')),
             ('ended early', {'reason': 'val_loss did not improve for 3 validations'},
              ('stopped early', 'val_loss did not improve for 3 validations')),
             ('stopped', {'reason': 'time limit'}, ('stopped', 'time limit')),
             ('failed', {'error': 'RuntimeError: boom'}, ('failed', 'RuntimeError: boom')),
             ('nonfinite', {'reason': 'loss nan at update 7'}, ('failed', 'loss nan at update 7'))]
    for outcome, kw, want in cases:
        plain = copy_run(trained, tmp_path / f'plain_{outcome}')
        end_line(plain, outcome, **kw)
        assert state_of(plain, {}) == want, outcome
        sub = copy_run(trained, tmp_path / f'sub_{outcome}')
        submit_line(sub)
        start_line(sub)
        end_line(sub, outcome, **kw)
        assert state_of(sub, {}) == want, outcome
    killed = copy_run(trained, tmp_path / 'killed')
    end_line(killed, 'finished')
    start_line(killed, seconds=5)                       # a start newer than the newest end, and no process
    assert state_of(killed, {}) == ('failed', 'ended without a record (killed?)')


def test_state_from_the_queue(trained, tmp_path):
    "The queue beats the files; a cancelled job that did not finish is cancelled; queued needs no run files."
    queued = tmp_path / 'queued'
    submit_line(queued, job_id='77_2')
    assert not (queued / 'resolved_config.yml').exists()
    st = run_state(queued, {'77_2': q('PENDING', reason='JobArrayTaskLimit')})
    assert (st['state'], st['reason'], st['updates'], st['job_id'], st['where'], st['overrides']) == (
        'queued', 'JobArrayTaskLimit', 0, '77_2', 'slurm', ['optimizer.learning_rate=1e-3'])
    assert state_of(queued, {'77_2': q('PENDING', restarts=1, reason='BeginTime')}) == ('requeued', 'BeginTime')
    assert state_of(queued, {'77_2': q('CANCELLED')})[0] == 'cancelled'
    assert state_of(queued, {'77_2': q('FAILED', reason='NonZeroExitCode', exit_code='1:0')})[0] == 'failed'
    run = copy_run(trained, tmp_path / 'run')
    submit_line(run, job_id='78')
    start_line(run)
    end_line(run, 'requeued', reason='preemption warning')
    assert state_of(run, {'78': q('PENDING', restarts=1)})[0] == 'requeued'     # the queue wins over the files
    st = run_state(run, {'78': q('RUNNING')})
    assert st['state'] == 'running' and st['eta_s'] is not None and st['updates'] == 20
    end_line(run, 'stopped', reason='SIGTERM')
    assert state_of(run, {'78': q('CANCELLED', exit_code='0:15')}) == ('cancelled', 'SIGTERM')
    end_line(run, 'finished')
    assert state_of(run, {'78': q('CANCELLED')})[0] == 'finished'
    assert state_of(run, {'78': q('COMPLETED')})[0] == 'finished'


def test_running_from_the_lock_and_from_a_local_pid(trained, tmp_path):
    "A real process holding the run lock, and a live local submission's process, make a run running."
    run = copy_run(trained, tmp_path / 'locked')
    code = f"from ml_suite.checkpoint import RunLock; import time; RunLock({str(run)!r}).acquire(); print('held', " \
           f"flush=True); time.sleep(60)"
    p = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == 'held'
        st = run_state(run, {})
        assert st['state'] == 'running' and f'pid {p.pid}' in st['reason']
    finally: p.kill(); p.wait()
    local = tmp_path / 'local'
    sleeper = subprocess.Popen(['sleep', '60'], start_new_session=True)
    try:
        submit_line(local, job_id=None, where='local', pid=sleeper.pid)
        assert state_of(local, None) == ('running', f'pid {sleeper.pid} (starting)')
    finally: sleeper.kill(); sleeper.wait()
    assert run_state(local, None)['state'] == 'failed'       # it ended without training starting


def make_sweep(trained, root: Path, queue_ids=('300_0', '300_1', '300_2')) -> tuple[Path, list]:
    "A sweep directory as ml_suite.submit makes it: sweep.json and one run directory per task, task 1 listed first."
    names = ['learning_rate=1e-3', 'learning_rate=3e-4', 'learning_rate=1e-4']
    sweep = root / 'sweep'
    dirs = [sweep / n for n in names]
    copy_run(trained, dirs[0])
    for i, (d, n) in enumerate(zip(dirs, names)):
        submit_line(d, job_id=queue_ids[i], overrides=(f'optimizer.learning_rate={n.split("=")[1]}', 'model.width=4'))
    start_line(dirs[0])
    end_line(dirs[0], 'finished')
    tasks = [{'task': i, 'overrides': [f'optimizer.learning_rate={n.split("=")[1]}'], 'run_dir': str(d)}
             for i, (d, n) in enumerate(zip(dirs, names))]
    (sweep / 'sweep.json').write_text(json.dumps({'config': 'x.yml', 'overrides': ['model.width=4'],
                                                  'tasks': [tasks[1], tasks[0], tasks[2]], 'jobs': []}))
    return sweep, dirs


def test_table_of_a_sweep_and_a_plain_run(trained, tmp_path):
    "The sweep expands in task order; only the overrides that differ are shown; a plain run shows none."
    sweep, dirs = make_sweep(trained, tmp_path)
    plain = copy_run(trained, tmp_path / 'plain')
    assert expand_runs([plain, sweep]) == [plain, *dirs]
    queue = {'300_1': q('RUNNING'), '300_2': q('PENDING', reason='JobArrayTaskLimit')}
    rows = status_table([plain, sweep], queue=queue)
    assert [r['state'] for r in rows] == ['finished', 'finished', 'running', 'queued']
    assert [r['differs'] for r in rows] == [{}, *({'optimizer.learning_rate': v} for v in ('1e-3', '3e-4', '1e-4'))]
    text = format_table(rows).splitlines()
    assert text[0].split()[:3] == ['run', 'state', 'job'] and 'differs' in text[0]
    assert text[1].split() == ['plain', 'finished', '-', '20/20', *text[1].split()[4:6], '-']
    assert 'optimizer.learning_rate=3e-4' in text[3] and 'running' in text[3] and 'model.width' not in '\n'.join(text)
    assert 'queued: JobArrayTaskLimit' in text[4] and '300_2' in text[4]


def test_ml_suite_status_command(trained, tmp_path, capsys):
    "The console script: one run dir keeps format_status's block plus its state; --json; a sweep is a table; exit 2."
    sweep, dirs = make_sweep(trained, tmp_path, queue_ids=('999990_0', '999990_1', '999990_2'))
    status = str(BIN / 'ml-suite-status')
    r = subprocess.run([status, str(dirs[0])], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'updates          20/20 (last row)' in r.stdout and 'not running' in r.stdout
    assert r.stdout.splitlines()[-1].startswith('  state            finished (job 999990_0')
    r = subprocess.run([status, str(sweep), '--json'], capture_output=True, text=True)
    rows = json.loads(r.stdout)
    assert r.returncode == 0 and [row['run_dir'] for row in rows] == [str(d) for d in dirs]
    assert rows[0]['state'] == 'finished' and rows[1]['differs'] == {'optimizer.learning_rate': '3e-4'}
    assert set(rows[0]) >= {'run_dir', 'state', 'reason', 'job_id', 'updates', 'total_updates', 'best_val_loss',
                            'best_update', 'eta_s', 'where', 'overrides', 'differs'}
    # the same code in this process, for the rest
    assert status_main([str(sweep)]) == 0
    assert [l.split()[0] for l in capsys.readouterr().out.splitlines()[1:]] == [d.name for d in dirs]
    assert status_main([str(dirs[0]), str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == '' and err.startswith(f'ml-suite-status: error: {tmp_path} is neither a run directory')
    assert 'sweep.json' in err and len(err.strip().splitlines()) == 1
    assert status_main([str(tmp_path / 'nowhere')]) == 2 and 'nowhere does not exist' in capsys.readouterr().err
    (sweep / 'sweep.json').write_text('{"tasks": 3}')
    assert status_main([str(sweep)]) == 2 and 'is not a sweep manifest' in capsys.readouterr().err


def test_watch_returns_when_the_runs_have_ended(trained, tmp_path, capsys):
    "Outside Jupyter watch prints the table and returns at once when every run is final; --watch does the same."
    run = copy_run(trained, tmp_path / 'done')
    t = time.monotonic()
    rows = watch(run, every=0.1)
    assert [r['state'] for r in rows] == ['finished'] and time.monotonic() - t < 10
    assert 'finished' in capsys.readouterr().out

    class Job:
        run_dirs = [run, copy_run(trained, tmp_path / 'also_done')]
    assert [r['state'] for r in watch(Job(), every=0.1)] == ['finished', 'finished']
    assert status_main([str(run), '--watch', '0.1']) == 0 and 'finished' in capsys.readouterr().out
    waiting = tmp_path / 'waiting'
    submit_line(waiting, where='local', job_id=None, pid=os.getpid())    # this process: alive, never final
    t = time.monotonic()
    rows = watch([run, waiting], every=0.1, timeout=0.5)
    assert [r['state'] for r in rows] == ['finished', 'running'] and 0.5 <= time.monotonic() - t < 10
    assert 'running' not in FINAL_STATES


def test_ml_suite_plot_takes_a_sweep(trained, tmp_path):
    sweep, dirs = make_sweep(trained, tmp_path)
    shutil.copy(trained / 'metrics.jsonl', dirs[1])
    assert plot_main([str(sweep), '-o', str(tmp_path / 'sweep.png')]) == 0
    assert (tmp_path / 'sweep.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    r = subprocess.run([str(BIN / 'ml-suite-plot'), str(sweep)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == str(sweep / 'curves.png')
    empty = tmp_path / 'empty_sweep'
    empty.mkdir()
    (empty / 'sweep.json').write_text(json.dumps({'tasks': [{'task': 0, 'run_dir': str(empty / 'a')}]}))
    assert plot_main([str(empty)]) == 2


SLEEP = '#!/bin/bash\nsleep 60\n'


@pytest.mark.slow
def test_queue_info_on_a_real_slurm(slurm, tmp_path, monkeypatch):
    "A 3-task array with %1: one task RUNNING, the pending range expanded; after scancel all CANCELLED; run_state."
    monkeypatch.setenv('SLURM_CONF', str(slurm.conf))
    script = tmp_path / 'sleep.sh'
    script.write_text(SLEEP)
    script.chmod(0o755)
    job = slurm.sbatch(script, extra_sbatch_args=['--array=0-2%1', f'--output={tmp_path}/o_%A_%a.out'])
    ids = [f'{job}_{t}' for t in range(3)]
    slurm.wait_state(ids[0], 'RUNNING', timeout=60)
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, 'run', lambda cmd, *a, **k: calls.append(cmd) or real_run(cmd, *a, **k))
    info = queue_info([*ids, '999999', '999998_3'])
    monkeypatch.setattr(subprocess, 'run', real_run)
    assert len([c for c in calls if c[:3] == ['scontrol', 'show', 'job']]) == 3      # one per job, not per task
    assert set(info) == set(ids), info
    assert info[ids[0]] == {'state': 'RUNNING', 'restarts': 0, 'reason': '', 'exit_code': '0:0'}
    for i in ids[1:]: assert info[i] == {'state': 'PENDING', 'restarts': 0, 'reason': 'JobArrayTaskLimit',
                                         'exit_code': '0:0'}
    runs = []
    for i in ids:
        submit_line(tmp_path / i, job_id=i)
        runs.append(tmp_path / i)
    assert [r['state'] for r in status_table(runs)] == ['running', 'queued', 'queued']
    slurm.scancel(str(job))
    slurm.wait_state(ids[0], 'CANCELLED', timeout=30)
    info = queue_info(ids)
    assert {k: v['state'] for k, v in info.items()} == {i: 'CANCELLED' for i in ids}
    assert [r['state'] for r in status_table(runs)] == ['cancelled'] * 3
    monkeypatch.setenv('PATH', str(tmp_path / 'no_bin'))
    assert queue_info(ids) == {}                                                        # no scontrol: nothing known
