"Helpers for the tutorial notebooks: run a command as a terminal would and show what it printed."
import os, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]   # the repository: configs/ and scripts/ are here

def sh(cmd:str, tail:int=12, show:bool=True) -> subprocess.CompletedProcess:
    "Run `cmd` in a shell from the repository root; print the command, the last `tail` lines and the exit code."
    env = {**os.environ, 'PATH': f"{Path(sys.executable).parent}:{os.environ['PATH']}", 'PYTHONUNBUFFERED': '1'}
    r = subprocess.run(cmd, shell=True, cwd=ROOT, env=env, capture_output=True, text=True)
    if show: print(f'$ {cmd}', *(r.stdout + r.stderr).strip().splitlines()[-tail:], f'[exit code {r.returncode}]', sep='\n')
    return r

def start(cmd:str) -> subprocess.Popen:
    "Start `cmd` in the background, as `cmd &` in a terminal (the shell becomes `cmd`, so signals reach it); output to a pipe."
    env = {**os.environ, 'PATH': f"{Path(sys.executable).parent}:{os.environ['PATH']}", 'PYTHONUNBUFFERED': '1'}
    return subprocess.Popen(f"exec {cmd}", shell=True, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

def wait_for(path:Path, timeout:float=300):
    "Wait until `path` exists."
    t0 = time.monotonic()
    while not Path(path).exists():
        if time.monotonic() - t0 > timeout: raise TimeoutError(f'{path} did not appear in {timeout} s')
        time.sleep(0.2)
