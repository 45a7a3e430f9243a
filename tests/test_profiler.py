"Issue 18: `profiler` writes a trace that Perfetto and TensorBoard open, logs the top operations, profiles once."
import json, logging
import pytest
import torch
from ml_suite.testing import trainer_for
from ml_suite.trainer import TrainerParts
from ml_suite.profiler import Profiler

def small_trainer(run_dir, total_updates, callbacks):
    "A linear model on random batches (an endless stream with a position), validated never; rows every 2 updates."
    from ml_suite.data import BatchStream
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g))
    torch.manual_seed(0)
    run_dir.mkdir(parents=True, exist_ok=True)
    parts = TrainerParts.in_run_dir(run_dir, callbacks=callbacks)
    return trainer_for(torch.nn.Linear(8, 1), BatchStream(data, 8, seed=0), parts=parts,
                       total_updates=total_updates, log_every=2)

def test_profiler_writes_a_trace_and_logs_the_top_operations(tmp_path, caplog):
    "Updates 3 to 5 profiled: one valid Chrome trace in run_dir/profile with a step per update; the log has the table."
    caplog.set_level(logging.INFO, logger='ml_suite')
    p = Profiler(start=2, updates=3)
    small_trainer(tmp_path, 8, [p]).fit()
    traces = sorted((tmp_path / 'profile').glob('*.pt.trace.json'))
    assert traces == [tmp_path / 'profile' / 'rank0.3.pt.trace.json'] == [p.trace], traces
    events = json.loads(traces[0].read_text())['traceEvents']
    steps = {e['name'] for e in events if e.get('name', '').startswith('ProfilerStep#')}
    assert steps == {'ProfilerStep#0', 'ProfilerStep#1', 'ProfilerStep#2'}, steps
    assert any(e.get('name') == 'aten::addmm' for e in events)   # the linear layer's forward
    log = caplog.text
    assert 'profiler: profiling updates 3 to 5 on rank 0' in log, log
    assert f'profiler: updates 3 to 5 profiled; trace {traces[0]}: open it in https://ui.perfetto.dev' in log, log
    table = log[log.index('Top operations'):].splitlines()[1:12]
    assert table[0].split() == ['self', 'ms', 'calls', 'us/call', 'operation'], table
    assert any(line.split()[-1] == 'aten::addmm' for line in table[1:]), table
    sd = torch.load(tmp_path / 'latest.pt', weights_only=False)
    assert list(sd['callbacks'].values()) == [{'done': True}]

def test_no_profile_when_resumed_past_the_window_or_before_it(tmp_path, caplog):
    "A run resumed after its window closed writes no second trace; a run that ends before the window writes none."
    caplog.set_level(logging.INFO, logger='ml_suite')
    small_trainer(tmp_path / 'short', 4, [Profiler(start=6, updates=2)]).fit()
    assert not (tmp_path / 'short' / 'profile').exists() and 'profiler:' not in caplog.text
    small_trainer(tmp_path, 8, [Profiler(start=2, updates=2)]).fit()
    first = sorted((tmp_path / 'profile').iterdir())
    assert len(first) == 1, first
    caplog.clear()
    t = small_trainer(tmp_path, 12, [Profiler(start=2, updates=2)])
    t.load_state_dict(torch.load(tmp_path / 'latest.pt', weights_only=False))
    assert t.callbacks[0].done
    t.fit()
    assert t.updates == 12 and sorted((tmp_path / 'profile').iterdir()) == first
    assert 'profiler:' not in caplog.text, caplog.text

def test_the_builtin_table_names_the_signature():
    "callbacks.BUILTIN_ARGS['profiler'] (read by the config check) is Profiler's signature; bad values: exit 2."
    import inspect
    from ml_suite.callbacks import BUILTIN_ARGS, BUILTIN_CALLBACKS
    from ml_suite.core import ConfigError
    sig = {k: p.default for k, p in inspect.signature(Profiler).parameters.items()}
    assert BUILTIN_ARGS['profiler'] == sig and BUILTIN_CALLBACKS['profiler'] == 'ml_suite.profiler:Profiler'
    with pytest.raises(ConfigError, match="updates is 0; it must be a whole number"): Profiler(updates=0)

def test_train_with_the_profiler_writes_the_trace_and_the_table_into_the_run(tmp_path):
    "From a config: the trace in run_dir/profile, its path and the top operations in training.log; a rerun: no more."
    from conftest import tiny_config, write_config
    from ml_suite.train import _main
    cfg = tiny_config(total_updates=6, updates_per_epoch=6, log_every=2, progress=False,
                      callbacks=[{'name': 'profiler', 'start': 2, 'updates': 2}])
    path = write_config(tmp_path / 'train.yml', cfg)
    assert _main([str(path)]) == 0
    trace = tmp_path / 'profile' / 'rank0.3.pt.trace.json'
    assert sorted((tmp_path / 'profile').iterdir()) == [trace]
    assert json.loads(trace.read_text())['traceEvents']
    log = (tmp_path / 'training.log').read_text()
    assert f'profiler: updates 3 to 4 profiled; trace {trace}: open it in https://ui.perfetto.dev' in log, log
    table = log[log.index('Top operations by their own CPU time:'):].splitlines()[1:12]
    assert table[0].split() == ['self', 'ms', 'calls', 'us/call', 'operation'] and len(table) == 11, table
    assert all(float(line.split()[0]) >= 0 for line in table[1:]), table
    assert _main([str(path), 'total_updates=10']) == 0
    assert sorted((tmp_path / 'profile').iterdir()) == [trace]
    assert (tmp_path / 'training.log').read_text().count('profiler: profiling updates') == 1

@pytest.mark.slow
def test_two_processes_end_alike_and_only_rank_0_profiles(tmp_path):
    "torchrun, 2 processes: early_stopping ends the run at update 20 (exit 0); one trace, rank 0's; done saved."
    import os, subprocess, sys
    from conftest import tiny_config, write_config
    cfg = tiny_config(total_updates=80, updates_per_epoch=10, log_every=10, progress=False,
                      callbacks=[{'name': 'early_stopping', 'patience': 1, 'min_delta': 1e9},
                                 {'name': 'profiler', 'start': 2, 'updates': 2}])
    path = write_config(tmp_path / 'train.yml', cfg)
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        '-m', 'ml_suite.train', str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [p.name for p in (tmp_path / 'profile').iterdir()] == ['rank0.3.pt.trace.json']
    sd = torch.load(tmp_path / 'latest.pt', weights_only=False)
    assert sd['updates'] == 20 and sd['ended'].startswith('early_stopping: val_loss did not improve')
    assert list(sd['callbacks'].values())[1] == {'done': True}
