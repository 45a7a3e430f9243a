"""A real one-node SLURM cluster in a temporary folder, for tests.

    from slurm_cluster import slurm            # the module-scoped pytest fixture (skips when SLURM is unavailable)

    def test_hello(slurm, tmp_path):
        job = slurm.sbatch(script, extra_sbatch_args=[f'--output={tmp_path}/out.txt'])
        info = slurm.wait_state(job, 'COMPLETED', timeout=30)

`SlurmCluster` starts munged, slurmctld and slurmd by hand (no systemd, no /etc changes): every key, socket,
config, state and spool file, log and pid file lives under one folder, and the daemons listen on free ports of
127.0.0.1, so several clusters can run side by side. Clients and jobs find it through `SLURM_CONF`
(`cluster.env()`). The daemons are started by a small init process (this file run with `--init`) that adopts
and reaps everything they leave behind. `stop()` cancels every job, stops the daemons through their pid files,
then has the init process kill whatever still carries this cluster's `SLURM_CONF` (slurmstepd, job tasks, a
job's orphans) and reap it: nothing outlives the cluster, not even a zombie. If the test process dies, the init
process notices (PR_SET_PDEATHSIG) and cleans up the same way.

Needs Linux, root and Debian's `slurm-wlm` + `munge` (`scripts/install_slurm.sh`). The settings follow
`HPC-NOTES.md` (measured on the CI machine): no cgroups (proctrack/linuxproc, task/none), no accounting
(so no `sacct`: finished jobs stay visible in `scontrol show job` for `min_job_age` seconds), and a short
`cred_expire` and scheduler interval so that a requeued job restarts after ~12 s instead of ~2 minutes.

Set `ML_SUITE_REQUIRE_SLURM=1` (as CI does after installing SLURM) to make the fixture fail instead of skip.
"""
from __future__ import annotations
import atexit, json, os, re, shutil, signal as _signal, socket, subprocess, sys, tempfile, time
from pathlib import Path
from typing import Callable, Iterable, Optional

__all__ = ['SlurmCluster', 'SlurmError', 'slurm_available', 'slurm', 'TERMINAL_STATES', 'REQUIRE_ENV']

REQUIRE_ENV = 'ML_SUITE_REQUIRE_SLURM'
DAEMONS = ('munged', 'mungekey', 'slurmctld', 'slurmd', 'slurmstepd')
CLIENTS = ('sbatch', 'srun', 'scontrol', 'squeue', 'scancel', 'sinfo')
TERMINAL_STATES = frozenset({'COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY',
                             'BOOT_FAIL', 'DEADLINE', 'PREEMPTED'})
# Variables that would steer our clients to another cluster, partition or allocation.
_FOREIGN_ENV = re.compile(r'^(SLURM_|SBATCH_|SALLOC_|SRUN_|SQUEUE_|SINFO_|SCANCEL_|SCONTROL_)')


# The cluster's init process: a child subreaper (like tini) that starts the daemons, so that everything they leave
# behind (their own daemonizing forks, slurmstepd, a job's orphans) is re-parented to it and reaped, not left as
# zombies under a PID 1 that may never reap them (containers). On SIGTERM, or when the test process dies, it kills
# whatever still carries the cluster's SLURM_CONF or is its child, reaps, and exits.
def _init_main():
    "`python slurm_cluster.py --init` with a JSON spec on stdin: see the comment above."
    import ctypes
    spec = json.loads(sys.stdin.readline()); marker = spec['marker'].encode(); me = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)                 # PR_SET_CHILD_SUBREAPER
    libc.prctl(1, _signal.SIGTERM, 0, 0, 0)    # PR_SET_PDEATHSIG: clean up if the test process dies
    def reap():
        while True:
            try: pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError: return
            if pid == 0: return
    def ours():
        found = []
        for d in os.listdir('/proc'):
            if not d.isdigit() or int(d) == me: continue
            try:
                env = Path(f'/proc/{d}/environ').read_bytes().split(b'\0')
                ppid = int(Path(f'/proc/{d}/stat').read_text().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError): continue
            if (marker in env or ppid == me) and _pid_alive(int(d)): found.append(int(d))
        return found
    def sweep():
        for sig in (_signal.SIGTERM, _signal.SIGKILL):
            for p in ours():
                try: os.kill(p, sig)
                except OSError: pass
            end = time.monotonic() + 5
            while time.monotonic() < end:
                reap()
                if not ours(): return
                time.sleep(0.05)
    try:
        for step in spec['steps']:
            r = subprocess.run(step['cmd'], capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise RuntimeError(f"{step['cmd'][0]} failed (rc {r.returncode}): {(r.stderr or r.stdout).strip()}")
            end = time.monotonic() + 20
            while not all(os.path.exists(p) for p in step['wait']):
                if time.monotonic() > end: raise RuntimeError(f"{step['cmd'][0]} started, but after 20 s there is no {step['wait']}")
                time.sleep(0.05)
    except Exception as e:
        print(json.dumps({'ok': False, 'error': str(e)}), flush=True)
        sweep(); reap(); sys.exit(1)
    print(json.dumps({'ok': True}), flush=True)
    sigs = {_signal.SIGCHLD, _signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP}
    _signal.pthread_sigmask(_signal.SIG_BLOCK, sigs)  # only now: the daemons must not inherit a blocked SIGTERM
    while True:
        reap()
        if _signal.sigwaitinfo(sigs).si_signo != _signal.SIGCHLD: break
    sweep(); reap()


class SlurmError(RuntimeError):
    "A SLURM daemon or client failed; the message ends with the relevant log tails."


def slurm_available() -> tuple[bool, str]:
    "Whether a `SlurmCluster` can start here, and if not, why (a message fit for `pytest.skip`)."
    if not Path('/proc/self/environ').exists(): return False, 'SLURM tests need Linux (/proc)'
    if os.geteuid() != 0:
        return False, 'SLURM tests need root (the one-node cluster runs slurmd and munged as root)'
    missing = [b for b in DAEMONS + CLIENTS if shutil.which(b) is None]
    if missing:
        return False, (f"SLURM is not installed (missing: {' '.join(missing)}); "
                       f"run scripts/install_slurm.sh (apt-get install slurm-wlm munge)")
    try:
        r = subprocess.run(['slurmd', '-C'], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e: return False, f'`slurmd -C` failed to run: {e}'
    if r.returncode != 0 or 'NodeName=' not in r.stdout:
        return False, f'`slurmd -C` failed (rc {r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}'
    return True, ''


def _free_ports(n: int) -> list[int]:
    "n distinct ports that are free on 127.0.0.1 right now (held open together, so they differ)."
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(('127.0.0.1', 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks: s.close()


def _tail(path: Path, n: int = 25) -> str:
    try: lines = Path(path).read_text(errors='replace').splitlines()
    except OSError: return f'({path} not readable)'
    return '\n'.join(lines[-n:])


def _pid_alive(pid: int) -> bool:
    try: os.kill(pid, 0)
    except ProcessLookupError: return False
    except PermissionError: return True
    try:  # a zombie is dead for our purposes
        return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError): return False


def parse_scontrol(line: str) -> dict:
    "`Key=Value Key=Value ...` (as printed by `scontrol show ... -o`) as a dict; values may contain spaces."
    # A field starts at a word like `Key=`, `Socks/Node=` or `ReqB:S:C:T=` that follows whitespace.
    parts = re.split(r'\s+(?=[A-Za-z][\w/:]*=)', line.strip())
    return dict(p.split('=', 1) for p in parts if '=' in p)


class SlurmCluster:
    "A one-node SLURM (munged + slurmctld + slurmd) under `root`; use as a context manager or call start/stop."

    def __init__(self, root: Optional[os.PathLike] = None, min_job_age: int = 600, start_timeout: float = 60,
                 keep: bool = False, partition: str = 'debug'):
        self.root = Path(root) if root is not None else None
        self.min_job_age, self.start_timeout, self.keep, self.partition = min_job_age, start_timeout, keep, partition
        self._own_root = root is None
        self._pids: dict[str, int] = {}
        self.started = False

    # -- paths ---------------------------------------------------------------------------------------------
    @property
    def conf(self) -> Path: return self.root / 'etc' / 'slurm.conf'
    @property
    def munge_socket(self) -> Path: return self.root / 'munge' / 'munge.socket'
    @property
    def logs(self) -> dict[str, Path]:
        return {n: self.root / 'log' / f'{n}.log' for n in ('munged', 'slurmctld', 'slurmd')}
    def _pidfile(self, name: str) -> Path: return self.root / 'run' / f'{name}.pid'

    # -- environment and clients ---------------------------------------------------------------------------
    def env(self, **extra) -> dict:
        "The environment for clients and jobs: this process's, minus foreign SLURM settings, plus SLURM_CONF."
        e = {k: v for k, v in os.environ.items() if not _FOREIGN_ENV.match(k)}
        e['SLURM_CONF'] = str(self.conf)
        e.update({k: str(v) for k, v in extra.items()})
        return e

    def run(self, *cmd, check: bool = True, timeout: float = 30, cwd=None) -> subprocess.CompletedProcess:
        "Run a SLURM client (`cluster.run('squeue', '-h')`) against this cluster; raises SlurmError on failure."
        cmd = [str(c) for c in cmd]
        r = subprocess.run(cmd, env=self.env(), cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise SlurmError(f"`{' '.join(cmd)}` failed (rc {r.returncode}): {(r.stderr or r.stdout).strip()}")
        return r

    def log_tails(self, n: int = 25) -> str:
        return '\n'.join(f'--- {p} (last {n} lines)\n{_tail(p, n)}' for p in self.logs.values() if p.exists())

    # -- jobs ----------------------------------------------------------------------------------------------
    def sbatch(self, script_path, *args, extra_sbatch_args: Iterable[str] = (), cwd=None) -> int:
        "Submit `script_path args...` (`sbatch --parsable`); returns the job id."
        r = self.run('sbatch', '--parsable', *extra_sbatch_args, script_path, *args, cwd=cwd)
        return int(r.stdout.strip().split(';')[0])

    def job_info(self, job_id) -> dict:
        "`scontrol show job -o JOB_ID` as a dict (JobState, ExitCode, Restarts, ...); LookupError if unknown."
        r = self.run('scontrol', 'show', 'job', '-o', job_id, check=False)
        if r.returncode != 0 or not r.stdout.strip():
            raise LookupError(f'job {job_id}: {(r.stderr or r.stdout).strip()}')
        return parse_scontrol(r.stdout.splitlines()[0])

    def job_ids(self) -> list[int]:
        "The ids of all jobs slurmctld still knows (pending, running, or finished less than min_job_age ago)."
        return [int(j) for j in self.run('squeue', '-h', '-o', '%i', '--states=all').stdout.split()
                if j.isdigit()]

    def wait_for(self, predicate: Callable[[], object], timeout: float = 30, interval: float = 0.2,
                 message: str | Callable[[], str] = 'condition') -> object:
        "Poll `predicate` until it returns something truthy (which is returned); TimeoutError after `timeout` s."
        deadline = time.monotonic() + timeout
        while True:
            v = predicate()
            if v: return v
            if time.monotonic() > deadline:
                msg = message() if callable(message) else message
                raise TimeoutError(f'timed out after {timeout} s waiting for {msg}')
            time.sleep(interval)

    def wait_state(self, job_id, states, timeout: float = 60, interval: float = 0.2,
                   fail_on_terminal: bool = True) -> dict:
        """Wait until the job's JobState is one of `states` (a name or several); returns its `job_info`.
        With `fail_on_terminal`, a finished state that is not wanted raises SlurmError at once."""
        want = {states} if isinstance(states, str) else set(states)
        last: dict = {}
        def check():
            nonlocal last
            try: last = self.job_info(job_id)
            except LookupError: return None
            st = last.get('JobState')
            if st in want: return last
            if fail_on_terminal and st in TERMINAL_STATES:
                raise SlurmError(f'job {job_id} ended {st} (waiting for {sorted(want)}): {last}\n{self.log_tails()}')
        try: return self.wait_for(check, timeout, interval)
        except TimeoutError as e:
            raise TimeoutError(f"job {job_id} still {last.get('JobState')} after {timeout} s (waiting for "
                               f"{sorted(want)}): {last}\n{self.log_tails()}") from e

    def scancel(self, job_id, signal: Optional[str] = None, batch_only: bool = False):
        "`scancel [--signal=SIG] [--batch] JOB_ID`: without `signal` the job is cancelled."
        args = ([f'--signal={signal}'] if signal else []) + (['--batch'] if batch_only else [])
        self.run('scancel', *args, job_id)

    # -- start and stop ------------------------------------------------------------------------------------
    def _node_line(self) -> str:
        out = subprocess.run(['slurmd', '-C'], capture_output=True, text=True, timeout=30, check=True).stdout
        f = parse_scontrol(next(l for l in out.splitlines() if l.startswith('NodeName=')))
        f.pop('NodeName'); f.pop('UpTime', None)
        f['RealMemory'] = str(max(1, int(int(f.get('RealMemory', '1000')) * 0.9)))
        return ' '.join(['NodeName=localhost', 'NodeAddr=127.0.0.1', *(f'{k}={v}' for k, v in f.items())])

    def _write_config(self):
        ctld_port, slurmd_port = _free_ports(2)
        self.ports = dict(slurmctld=ctld_port, slurmd=slurmd_port)
        r = self.root
        self.conf.write_text(f"""\
# Written by tests/slurm_cluster.py: a one-node SLURM whose files all live under {r}
ClusterName=mlsuitetest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={self._pidfile('slurmctld')}
SlurmdPidFile={self._pidfile('slurmd')}
SlurmctldLogFile={self.logs['slurmctld']}
SlurmdLogFile={self.logs['slurmd']}
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups, no accounting
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
KillWait=5
# finished jobs stay in `scontrol show job` this long (there is no sacct)
MinJobAge={self.min_job_age}
# a requeued job restarts after ~12 s (default: ~2 min)
SchedulerParameters=bf_interval=2,sched_interval=2
{self._node_line()}
PartitionName={self.partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")

    def _pid(self, name: str) -> Optional[int]:
        try: return int(self._pidfile(name).read_text().split()[0])
        except (OSError, ValueError, IndexError): return None

    def start(self) -> 'SlurmCluster':
        "Start munged, slurmctld and slurmd and wait until the node is idle (~1-10 s)."
        ok, reason = slurm_available()
        if not ok: raise SlurmError(reason)
        if self.started: return self
        if self.root is None: self.root = Path(tempfile.mkdtemp(prefix='slurm-'))
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        for d in ('etc', 'munge', 'state', 'spool', 'log', 'run'):
            (self.root / d).mkdir(exist_ok=True)
        os.chmod(self.root / 'munge', 0o755)  # munged refuses a socket folder of mode 700
        if len(str(self.munge_socket)) > 100: raise SlurmError(f'path too long for a unix socket: {self.munge_socket}')
        atexit.register(self.stop)
        t0 = time.monotonic()
        try:
            key = self.root / 'munge' / 'munge.key'
            if not key.exists(): self.run('mungekey', '--create', f'--keyfile={key}')
            self._write_config()
            pid = self._pidfile
            steps = [dict(cmd=['munged', f'--key-file={key}', f'--socket={self.munge_socket}',
                               f"--pid-file={pid('munged')}", f"--log-file={self.logs['munged']}",
                               f"--seed-file={self.root / 'munge' / 'munged.seed'}"],
                          wait=[str(self.munge_socket), str(pid('munged'))]),
                     dict(cmd=['slurmctld', '-f', str(self.conf)], wait=[str(pid('slurmctld'))]),
                     dict(cmd=['slurmd', '-f', str(self.conf), '-N', 'localhost'], wait=[str(pid('slurmd'))])]
            with open(self.root / 'log' / 'init.log', 'w') as err:
                self._init = subprocess.Popen([sys.executable, __file__, '--init'], env=self.env(), text=True,
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                              start_new_session=True)
            self._init.stdin.write(json.dumps(dict(marker=f'SLURM_CONF={self.conf}', steps=steps)) + '\n')
            self._init.stdin.close()
            line = self._init.stdout.readline()
            try: res = json.loads(line)
            except ValueError: res = dict(ok=False, error=f'the init process said {line!r}: '
                                                          f"{_tail(self.root / 'log' / 'init.log')}")
            if not res['ok']: raise SlurmError(f"{res['error']}\n{self.log_tails()}")
            self._pids = {n: self._pid(n) for n in ('munged', 'slurmctld', 'slurmd')}
            self.started = True
            def idle():
                r = self.run('scontrol', 'show', 'node', '-o', 'localhost', check=False, timeout=10)
                return r.returncode == 0 and parse_scontrol(r.stdout).get('State', '').startswith('IDLE')
            try: self.wait_for(idle, max(1, self.start_timeout - (time.monotonic() - t0)), 0.25, 'node idle')
            except TimeoutError as e:
                state = self.run('scontrol', 'show', 'node', '-o', 'localhost', check=False).stdout.strip()
                raise SlurmError(f'{e}: {state}\n{self.log_tails()}') from None
            self.start_seconds = time.monotonic() - t0
            return self
        except BaseException:
            self.keep = True  # leave the logs for a post-mortem; the error message names them
            self.stop()
            raise

    def processes(self) -> list[int]:
        "Pids of live processes whose environment has this cluster's SLURM_CONF (daemons, slurmstepd, job tasks)."
        marker = f'SLURM_CONF={self.conf}'.encode()
        pids = []
        for d in Path('/proc').iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid(): continue
            try:
                if marker in (d / 'environ').read_bytes().split(b'\0') and _pid_alive(int(d.name)):
                    pids.append(int(d.name))
            except OSError: pass
        return pids

    def stop(self):
        "Cancel all jobs, stop the daemons, kill whatever still carries this cluster's SLURM_CONF. Idempotent."
        if self.root is None: return
        atexit.unregister(self.stop)
        if self.started:  # cancel jobs while slurmctld still runs, so that slurmstepd ends them cleanly
            try:
                if self.job_ids():
                    self.run('scancel', '--user=root', check=False)
                    active = 'PENDING,RUNNING,COMPLETING,SUSPENDED,CONFIGURING,REQUEUED,SIGNALING,STAGE_OUT'
                    def drained():
                        r = self.run('squeue', '-h', '-o', '%i', f'--states={active}', check=False, timeout=10)
                        return r.returncode != 0 or not r.stdout.strip()
                    try: self.wait_for(drained, 15, 0.2)
                    except TimeoutError: pass
            except (SlurmError, OSError, subprocess.SubprocessError): pass
        # Daemons in order: slurmd (it owns the job steps), slurmctld, munged; each by its pid file, if still ours.
        for name in ('slurmd', 'slurmctld', 'munged'):
            pid = self._pids.get(name) or self._pid(name)
            if pid is None or pid not in self.processes(): continue
            try: os.kill(pid, _signal.SIGTERM)
            except ProcessLookupError: continue
            try: self.wait_for(lambda: not _pid_alive(pid), 10, 0.05)
            except TimeoutError: os.kill(pid, _signal.SIGKILL)
        # The init process kills what is left (slurmstepd, job tasks), reaps everything and exits.
        init = getattr(self, '_init', None)
        if init is not None:
            if init.poll() is None: init.terminate()
            try: init.wait(20)
            except subprocess.TimeoutExpired: init.kill(); init.wait()
            init.stdout.close()
            self._init = None
        for sig in (_signal.SIGTERM, _signal.SIGKILL):  # only if the init process failed at its job
            for p in self.processes():
                try: os.kill(p, sig)
                except OSError: pass
            try: self.wait_for(lambda: not self.processes(), 5, 0.1)
            except TimeoutError: pass
            else: break
        self.started = False
        self._pids = {}
        if self._own_root and not self.keep: shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self): return self.start()
    def __exit__(self, *exc): self.stop()
    def __repr__(self): return f'SlurmCluster({self.root}, started={self.started})'


if __name__ == '__main__' and sys.argv[1:] == ['--init']:
    _init_main()
    sys.exit(0)

try:
    import pytest
except ImportError:  # the harness also works outside pytest
    pytest = None

if pytest is not None:
    @pytest.fixture(scope='module')
    def slurm():
        """A running one-node `SlurmCluster` for the test module; skips (or fails, with ML_SUITE_REQUIRE_SLURM=1)
        when SLURM is not installed, not root, or the daemons do not come up."""
        required = os.environ.get(REQUIRE_ENV, '') not in ('', '0')
        bail = pytest.fail if required else pytest.skip
        ok, reason = slurm_available()
        if not ok: bail(reason)
        cluster = SlurmCluster()
        try: cluster.start()
        except (SlurmError, OSError, subprocess.SubprocessError) as e:
            bail(f'could not start a one-node SLURM (files kept in {cluster.root}): {e}')
        try: yield cluster
        finally: cluster.stop()
