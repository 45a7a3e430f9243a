"""Faults of the machine, with real filesystems and real signals: a full disk (a small tmpfs), a read-only run
directory, Ctrl-C once and twice, and checkpoints that carry a pickled payload."""
import hashlib, os, signal, subprocess, sys, threading, time
from contextlib import contextmanager
from pathlib import Path
import pytest, torch
from conftest import tiny_config, write_config, run_cli, read_rows
from ml_suite.core import RunError
from ml_suite.train import train

@contextmanager
def tmpfs(path: Path, size='8m', ro=False):
    "A small tmpfs mounted at `path` (root only; the test is skipped where mounting is not permitted)."
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}' + (',ro' if ro else ''), 'tmpfs', str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0: pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {r.stderr.strip()}")
    try: yield path
    finally: subprocess.run(['umount', '-l', str(path)], capture_output=True)

def digest(p: Path) -> str: return hashlib.sha256(p.read_bytes()).hexdigest()

# A model as cheap to train as the tiny one, whose checkpoint is ~1 MB: a parameter that gets no gradient (so no
# optimizer state either) makes the file big enough that the small files of a run fit where a checkpoint does not.
BIG = '''
import torch
class Big(torch.nn.Module):
    def __init__(self, width=4, depth=1):   # the tiny config's keys, unused
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.ballast = torch.nn.Parameter(torch.zeros(250_000))
    def forward(self, x): return self.conv(x)
'''

def fill(folder: Path, leave: int) -> Path:
    "Fill the filesystem of `folder` until only about `leave` bytes are free."
    import shutil
    filler = folder / 'filler'
    with open(filler, 'wb') as f:
        f.write(b'\0' * max(shutil.disk_usage(folder).free - leave, 0))
    return filler

def test_full_disk_at_a_checkpoint_is_one_paragraph_and_the_old_checkpoints_survive(tmp_path):
    (tmp_path / 'big.py').write_text(BIG)
    with tmpfs(tmp_path / 'disk', '8m') as disk:
        run = disk / 'results' / 'run'                  # missing parents are created, as mkdir -p does
        cfg = write_config(tmp_path / 'train.yml', tiny_config(model=dict(type='big:Big', criterion='mse'), total_updates=20,
                                                               updates_per_epoch=10, run_dir=str(run)))
        assert train(cfg).finished                     # in this process: the CLI is run where its output matters
        before = {n: digest(run / n) for n in ('latest.pt', 'previous.pt', 'best.pt')}
        size = (run / 'latest.pt').stat().st_size
        assert size > 10**6
        filler = fill(disk, size // 2)                 # room for log lines and metrics rows, not for a checkpoint
        r = run_cli(cfg, 'total_updates=40', cwd=tmp_path)
        assert r.returncode == 1, r.stdout + r.stderr
        assert 'Traceback' not in r.stderr + r.stdout
        msg = r.stderr.strip().splitlines()
        assert len(msg) == 1 and msg[0].startswith('ml-suite-train: error: cannot write checkpoint'), r.stderr
        for words in (str(run / 'latest.pt'), 'no space left on device', 'free; this checkpoint needs about',
                      'latest.pt is still update 20', 'Free space', 'run_dir', 'RESULTS_DIR', 'rerun the same command'):
            assert words in msg[0], (words, msg[0])
        assert 'no space left on device' in (run / 'training.log').read_text()
        assert not list(run.glob('.*tmp')) and not list(run.glob('*.tmp')), 'a temporary file was left behind'
        assert {n: digest(run / n) for n in before} == before, 'a previous checkpoint was changed'
        for n in before: torch.load(run / n, weights_only=True)
        assert torch.load(run / 'latest.pt', weights_only=True)['updates'] == 20
        filler.unlink()
        assert train(cfg, ['total_updates=40']).updates == 40
        assert 'resumed from' in (run / 'training.log').read_text() and 'at update 20/40' in (run / 'training.log').read_text()
        assert [row['update'] for row in read_rows(run)] == [5, 10, 15, 20, 25, 30, 35, 40]

def test_metrics_and_log_on_a_full_disk_warn_once_and_leave_no_half_line(tmp_path):
    from ml_suite.tracking import MetricsLog, read_metrics, setup_logging, close_logging, logger
    with tmpfs(tmp_path / 'disk', '1m') as disk:
        import io, contextlib
        log, err = MetricsLog(disk / 'metrics.jsonl'), io.StringIO()
        log.write({'update': 1, 'train_loss': 0.5})
        setup_logging(disk)
        try:
            fill(disk, 0)
            with contextlib.redirect_stderr(err):
                for u in range(2, 600): log.write({'update': u, 'train_loss': 0.5, 'pad': 'x' * 100})   # no exception
                for _ in range(200): logger.info('y' * 200)
        finally: close_logging()
        rows = read_metrics(disk / 'metrics.jsonl')
        assert rows[0]['update'] == 1 and [r['update'] for r in rows] == list(range(1, len(rows) + 1))
        assert (disk / 'metrics.jsonl').read_text().endswith('\n'), 'a half row was left'
        assert err.getvalue().count('cannot write') == 1 and 'Traceback' not in err.getvalue(), err.getvalue()
        assert 'No space left on device' in err.getvalue()

def test_unwritable_run_dir_is_refused_before_training(tmp_path):
    with tmpfs(tmp_path / 'disk', '1m', ro=True) as disk:                # root ignores chmod; a read-only mount it cannot
        run = disk / 'results' / 'exp1'
        cfg = write_config(tmp_path / 'train.yml', tiny_config(total_updates=5, updates_per_epoch=5, run_dir=str(run)))
        with pytest.raises(RunError) as e: train(cfg)                    # `ml-suite-train` prints it as one paragraph
        assert e.value.exit_code == 1
        msg = str(e.value)
        assert msg == (f"the run directory {run} is not writable: its parent {disk}, where it would "
                       f"be created, refuses new files (Read-only file system). Make it writable, or set run_dir (in the "
                       f"config, on the command line as run_dir=PATH, or through RESULTS_DIR where the config uses "
                       f"${{RESULTS_DIR}}) to a folder you can write to."), msg
        assert sorted(p.name for p in tmp_path.iterdir()) == ['disk', 'train.yml']

SLOW = '''
import os, time
from pathlib import Path
from ml_suite.data import HeatDataset

class SlowHeat(HeatDataset):
    # With $SLOW_VAL set, validation reads slowly (from sample 4 on, so that a look at the first samples while the run
    # is built stays quick) and touches $SLOW_VAL, so that a test can see it running.
    def __getitem__(self, i):
        if self.split == 'val' and i >= 4 and os.environ.get('SLOW_VAL'):
            Path(os.environ['SLOW_VAL']).touch(); time.sleep(0.25)
        return super().__getitem__(i)
'''

class Run:
    "The CLI in its own process group (as a terminal's foreground job), its output read by a thread."
    def __init__(self, cfg_path, cwd, env=None, args=()):
        self.p = subprocess.Popen([sys.executable, '-m', 'ml_suite.train', str(cfg_path), *args], cwd=cwd,
                                  env={**os.environ, 'PYTHONUNBUFFERED': '1', **(env or {})}, start_new_session=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out, self.err = [], []
        threading.Thread(target=lambda: self.out.extend(self.p.stdout), daemon=True).start()
        threading.Thread(target=lambda: self.err.extend(self.p.stderr), daemon=True).start()
    def ctrl_c(self): os.killpg(self.p.pid, signal.SIGINT)   # what a terminal does: the whole foreground group
    def wait_for(self, pred, timeout=120):
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.p.poll() is None and not pred(): time.sleep(0.01)
        assert pred(), ''.join(self.out + self.err)
    def text(self): time.sleep(0.2); return ''.join(self.out), ''.join(self.err)

def test_ctrl_c_saves_a_checkpoint_exits_130_and_the_run_resumes_from_it(tmp_path):
    cfg = write_config(tmp_path / 'train.yml', tiny_config(total_updates=3000, updates_per_epoch=1000, log_every=10))
    run = Run(cfg, tmp_path)
    run.wait_for(lambda: any('update 20/3000' in l for l in run.out))
    run.ctrl_c()
    assert run.p.wait(timeout=60) == 130
    out, err = run.text()
    assert 'Traceback' not in out + err
    assert 'Ctrl-C: finishing this update, saving a checkpoint' in err and '(SIGINT); saving a checkpoint' in out
    state = torch.load(tmp_path / 'latest.pt', weights_only=True)
    stopped = state['updates']
    assert 20 <= stopped < 3000
    assert f'stopped with a checkpoint of update {stopped} in {tmp_path / "latest.pt"}; rerun the same command' in out
    rows = read_rows(tmp_path)
    assert train(cfg, [f'total_updates={stopped + 20}']).updates == stopped + 20
    assert f'at update {stopped}/{stopped + 20}' in (tmp_path / 'training.log').read_text()
    updates = [row['update'] for row in read_rows(tmp_path)]
    assert updates == sorted(set(updates)) and updates[:len(rows)] == [row['update'] for row in rows]
    assert updates[-1] == stopped + 20

@pytest.mark.slow
def test_ctrl_c_then_rerun_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    over = dict(total_updates=200, updates_per_epoch=50, log_every=10, checkpoint=dict(every_updates=25),
                lr_scheduler=dict(first_stage=dict(name='LinearLR', start_factor=0.1, num_updates=20),
                                  second_stage=dict(name='CosineAnnealingLR', num_updates=-1)))
    ref = write_config(tmp_path / 'ref' / 'train.yml', tiny_config(**over))
    assert run_cli(ref, cwd=tmp_path / 'ref').returncode == 0
    cfg = write_config(tmp_path / 'int' / 'train.yml', tiny_config(**over))
    run = Run(cfg, tmp_path / 'int')
    run.wait_for(lambda: any('update 30/200' in l for l in run.out))
    run.ctrl_c()
    assert run.p.wait(timeout=60) == 130
    assert 30 <= torch.load(tmp_path / "int" / "latest.pt", weights_only=True)["updates"] < 200
    assert run_cli(cfg, cwd=tmp_path / 'int').returncode == 0
    a, b = (torch.load(d / 'latest.pt', weights_only=True) for d in (tmp_path / 'ref', tmp_path / 'int'))
    assert a["updates"] == b["updates"] == 200
    for k in a['model']: assert torch.equal(a['model'][k], b['model'][k]), k

def test_a_second_ctrl_c_exits_at_once_and_latest_stays_complete(tmp_path):
    (tmp_path / 'slow.py').write_text(SLOW)
    marker = tmp_path / 'validating'
    cfg = write_config(tmp_path / 'train.yml', tiny_config(dataset=dict(name='slow:SlowHeat', size=16, modes=4, num_samples=128),
                                                           total_updates=40, updates_per_epoch=20, log_every=5,
                                                           val_batch_size=4, checkpoint=dict(every_updates=10)))
    run = Run(cfg, tmp_path, env={'SLOW_VAL': str(marker)})   # the first validation (update 20) takes ~31 s
    run.wait_for(marker.exists)
    run.ctrl_c()                                       # the first: save and stop after this validation
    time.sleep(1.5)                                    # later than a launcher's forwarded copy of the first
    t0 = time.monotonic(); run.ctrl_c()                # the second, while it is still validating
    code = run.p.wait(timeout=60)
    took = time.monotonic() - t0
    out, err = run.text()
    assert code == 130, out + err
    # what was left of the validation when the second Ctrl-C came: at least 124 x 0.25 - 1.5 = 29.5 s of sleep alone
    assert took < 10, f'the second Ctrl-C took {took:.1f} s to end the process; finishing would take 29.5 s or more'
    assert 'Traceback' not in out + err
    assert 'interrupted twice: stopped at once' in err and 'latest.pt is the last complete one' in err
    assert 'interrupted again at update 20' in (tmp_path / 'training.log').read_text()
    assert torch.load(tmp_path / 'latest.pt', weights_only=True)['updates'] == 10
    assert not list(tmp_path.glob('.*.tmp'))
    assert not (tmp_path / 'previous.pt').exists()    # the save of update 10 was the only one

@pytest.mark.slow
def test_ctrl_c_under_torchrun_saves_once_from_both_ranks(tmp_path):
    "A terminal's Ctrl-C reaches torchrun and both workers; torchrun forwards its own SIGINT at once: one Ctrl-C, one save."
    cfg = write_config(tmp_path / 'train.yml', tiny_config(total_updates=3000, updates_per_epoch=1000, log_every=10))
    p = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                          '-m', 'ml_suite.train', str(cfg)], cwd=tmp_path, start_new_session=True,
                         env={**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    threading.Thread(target=lambda: out.extend(p.stdout), daemon=True).start()
    end = time.monotonic() + 180
    while not any('update 20/3000' in l for l in out) and time.monotonic() < end and p.poll() is None: time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)
    p.wait(timeout=120); time.sleep(0.2)
    text = ''.join(out)
    assert 'interrupted twice' not in text, text                       # torchrun's forwarded copy is not a second Ctrl-C
    log = (tmp_path / 'training.log').read_text()
    assert '(SIGINT); saving a checkpoint' in log, text
    stopped = torch.load(tmp_path / 'latest.pt', weights_only=True)['updates']
    assert 20 <= stopped < 3000
    assert [l for l in log.splitlines() if 'stopping at update' in l][0].count(f'update {stopped}/') == 1

class Payload:
    "Unpickling this runs a shell command that creates a marker file."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))

def test_a_pickled_payload_is_refused_everywhere_a_checkpoint_is_loaded(tmp_path):
    from ml_suite.checkpoint import load_checkpoint, CheckpointDamaged
    from ml_suite.inference import load_model
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pt'
    torch.save({'model': Payload(marker), 'optimizer': {}, 'scheduler': {}, 'updates': 1, 'data': {}}, evil)
    with pytest.raises(CheckpointDamaged, match='GLOBAL posix.system'): load_checkpoint(evil)
    with pytest.raises(CheckpointDamaged, match='refuses to unpickle'): load_model(evil, device='cpu')
    run = tmp_path / 'run'; run.mkdir()
    (run / 'latest.pt').write_bytes(evil.read_bytes())                     # as this run's own latest.pt
    cfg = write_config(tmp_path / 'train.yml', tiny_config(total_updates=5, updates_per_epoch=5, run_dir=str(run)))
    with pytest.raises(RunError, match='every checkpoint in'): train(cfg)    # (tests/test_resume.py: the CLI's paragraph)
    assert 'GLOBAL posix.system' in (run / 'training.log').read_text()
    with pytest.raises(RunError, match='cannot be read as a checkpoint.*named by checkpoint.path'):   # a pretrained model
        train(cfg, [f'run_dir={tmp_path / "run2"}', f'checkpoint.path={evil}'])
    assert not marker.exists(), 'loading a checkpoint ran the pickled payload'
