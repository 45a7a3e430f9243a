"""A notebook-first PyTorch training suite for long GPU and HPC runs: one config from a Jupyter cell to torchrun to a preempted SLURM job.

Modules:

- `ml_suite.core`: The few pieces every other module leans on: one error type for bad input, name resolution for built-ins and import paths, and the reader of `metrics.jsonl`."""

__version__ = "0.1.0"
