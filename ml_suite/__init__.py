"""A notebook-first PyTorch training suite for long GPU and HPC runs: one config from a Jupyter cell to torchrun to a preempted SLURM job.

Modules:

- `ml_suite.core`: The few pieces every other module leans on: one error type for bad input, name resolution for built-ins and import paths, and the reader of `metrics.jsonl`.
- `ml_suite.submit`: One run or a sweep, from a notebook or the command line, to SLURM or to the background of this machine: the job script written for you, kept in the run directory, and a handle to follow, wait for or cancel the job."""

__version__ = "0.1.0"
