"""From a trained run directory to metrics, predictions and a deployable file, through the command lines in fresh
processes: ml-suite-eval (also under torchrun), ml-suite-predict, ml-suite-export (.pt2 and ONNX, reloaded without
ml_suite), and normalization statistics that are the same on one process or two."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest, torch
from conftest import tiny_config, write_config, run_cli, read_rows
from test_distributed import torchrun

def inference_cli(*args, cwd=None, timeout=300):
    "`python -m ml_suite.inference ARGS` (eval/predict/export) in a fresh process."
    e = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    return subprocess.run([sys.executable, '-m', 'ml_suite.inference', *map(str, args)], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout)

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A trained run directory: 40 updates, validated every 10, on normalized heat data."
    d = tmp_path_factory.mktemp('inference') / 'run'
    cfg = write_config(d / 'train.yml', tiny_config(metrics=['mae', 'rmse'], updates_per_epoch=10, progress=False))
    r = run_cli(cfg, env={'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr
    return d

def test_best_checkpoint_evaluates_to_the_logged_best_validation_metrics(run, capsys):
    st = torch.load(run / 'best.pt', weights_only=True)
    assert st['normalization']['x_mean'] is not None and st['normalization']['y_std'] is not None, 'heat is normalized'
    from ml_suite.inference import eval_main
    threads = torch.get_num_threads(); torch.set_num_threads(1)   # as the training process ran (OMP_NUM_THREADS=1)
    try: assert eval_main([str(run), '--device', 'cpu']) == 0
    finally: torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert 'physical units' in out and 'rel_l2' in out, out
    res = json.loads((run / 'eval_best_val.json').read_text())
    vals = [row for row in read_rows(run) if 'val_loss' in row]
    best = min(vals, key=lambda row: row['val_loss'])
    assert res['updates'] == best['update']
    # Same model, same batches, same kernels and threads, same code as validation during training: equal (1e-9 relative
    # allows for nothing but float64 rounding; with other thread counts float32 kernels round differently, ~1e-7).
    for k in ('loss', 'mae', 'rmse'):
        assert res['metrics'][k] == pytest.approx(best[f'val_{k}'], rel=1e-9, abs=0), k
    assert res['samples'] == 128
    assert res['metrics']['rmse_physical'] != res['metrics']['rmse'], 'physical units differ from normalized ones'

DIST = '''
import sys, torch
from ml_suite.core import DistInfo
from ml_suite.data import HeatDataset, compute_normalization
from ml_suite.inference import eval_main
out, run = sys.argv[1], sys.argv[2]
dist = DistInfo.from_env()
if dist.distributed: torch.distributed.init_process_group('gloo')
nm = compute_normalization(HeatDataset('train', size=16, modes=4, num_samples=300), chunk=16, dist=dist)
torch.save(nm.state_dict(), out + f'/stats_{dist.world_size}_{dist.rank}.pt')
eval_main([run, '--split', 'test', '--checkpoint', 'latest', '--device', 'cpu'])   # in the group joined above
if dist.distributed: torch.distributed.destroy_process_group()
'''

@pytest.mark.slow
def test_one_process_or_two_under_torchrun_give_the_same_evaluation_and_statistics(run, tmp_path):
    "`ml-suite-eval` of the test split, and the normalization statistics, with one process and with torchrun's two."
    (tmp_path / 'dist.py').write_text(DIST)
    e = {**os.environ, 'OMP_NUM_THREADS': '1'}
    one = subprocess.run([sys.executable, tmp_path / 'dist.py', tmp_path, run], capture_output=True, text=True, timeout=300, env=e)
    assert one.returncode == 0, one.stderr
    res1 = json.loads((run / 'eval_latest_test.json').read_text())
    (run / 'eval_latest_test.json').unlink()
    two = torchrun('--standalone', '--nproc_per_node=2', tmp_path / 'dist.py', tmp_path, run, cwd=tmp_path, timeout=120)
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("on split 'test'") == 1, 'one table, from rank 0'
    res2 = json.loads((run / 'eval_latest_test.json').read_text())
    assert (res1['processes'], res2['processes'], res2['samples']) == (1, 2, 128)
    # Each rank sums its own batches: only the float32 rounding inside a batch differs (1e-6 relative).
    for k, v in res1['metrics'].items(): assert res2['metrics'][k] == pytest.approx(v, rel=1e-6), k
    stats1, *stats2 = [torch.load(tmp_path / f, weights_only=True) for f in ('stats_1_0.pt', 'stats_2_0.pt', 'stats_2_1.pt')]
    for st in stats2:
        for k in ('x_mean', 'x_std', 'y_mean', 'y_std'): assert torch.equal(stats1[k], st[k]), k   # bit for bit
    assert stats1['y_std'][0] < stats1['x_std'][0], 'the targets (a time step later) are smoother'

def test_predict_on_a_folder_writes_one_output_per_input(run, tmp_path):
    from ml_suite.data import HeatDataset
    from ml_suite.inference import load_model
    inp = tmp_path / 'in'; inp.mkdir()
    xs = [HeatDataset('test', size=16, modes=4, num_samples=5)[i][0] for i in range(5)]
    for i, x in enumerate(xs):
        if i < 3: torch.save(x, inp / f'sample_{i}.pt')
        else: np.save(inp / f'sample_{i}.npy', x.numpy())
    from ml_suite.inference import predict_main
    assert predict_main([str(run), str(inp), '--out', str(tmp_path / 'out'), '--batch-size', '2', '--device', 'cpu']) == 0
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['sample_0.pt', 'sample_1.pt', 'sample_2.pt',
                                                                   'sample_3.npy', 'sample_4.npy']
    model = load_model(run, 'best', device='cpu')
    want = model(torch.stack(xs))
    got = [torch.load(tmp_path / 'out' / f'sample_{i}.pt') for i in range(3)] + \
          [torch.from_numpy(np.load(tmp_path / 'out' / f'sample_{i}.npy')) for i in (3, 4)]
    torch.testing.assert_close(torch.stack(got), want, rtol=1e-5, atol=1e-6)
    np.save(inp / 'sample_5.npy', np.zeros((2, 16, 16), dtype=np.float32))
    r = inference_cli('predict', run, inp, '--out', tmp_path / 'out2', '--device', 'cpu')
    assert r.returncode == 2
    assert 'sample_5.npy has shape (2, 16, 16), but the model expects one sample of shape (1, 16, 16)' in r.stderr, r.stderr

RELOAD_PT2 = '''
import sys, torch
sys.modules['ml_suite'] = None          # any import of ml_suite would now fail
prog = torch.export.load(sys.argv[1]).module()
torch.save(prog(torch.load(sys.argv[2])), sys.argv[3])
'''

def test_pt2_export_reloads_without_ml_suite_and_matches(run, tmp_path, capsys):
    from ml_suite.inference import export_main
    assert export_main([str(run)]) == 0
    assert (run / 'best.pt2').is_file() and 'max abs error' in capsys.readouterr().out
    report = json.loads((run / 'best.pt2.json').read_text())
    assert report['check']['max_abs_error'] <= 1e-5 and report['input_shape'] == ['batch', 1, 16, 16]
    from ml_suite.data import HeatDataset
    from ml_suite.inference import load_model, TOLERANCES
    x = torch.stack([HeatDataset('test', size=16, modes=4)[i][0] for i in range(3)])   # another batch size than the export's
    torch.save(x, tmp_path / 'x.pt')
    (tmp_path / 'reload.py').write_text(RELOAD_PT2)
    r = subprocess.run([sys.executable, tmp_path / 'reload.py', run / 'best.pt2', tmp_path / 'x.pt', tmp_path / 'y.pt'],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    want = load_model(run, 'best', device='cpu')(x)
    torch.testing.assert_close(torch.load(tmp_path / 'y.pt'), want, **TOLERANCES['pt2'])   # atol = rtol = 1e-5

RELOAD_ONNX = '''
import sys, numpy as np, onnxruntime as ort
sess = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])
np.save(sys.argv[3], sess.run(None, {sess.get_inputs()[0].name: np.load(sys.argv[2])})[0])
assert 'ml_suite' not in sys.modules and 'torch' not in sys.modules
'''

def test_onnx_export_runs_in_onnxruntime_and_matches(run, tmp_path):
    pytest.importorskip('onnxruntime'); pytest.importorskip('onnxscript')
    from ml_suite.inference import export_main
    assert export_main([str(run), '--format', 'onnx', '--out', str(tmp_path / 'model.onnx')]) == 0
    from ml_suite.data import HeatDataset
    from ml_suite.inference import load_model, TOLERANCES
    x = torch.stack([HeatDataset('test', size=16, modes=4)[i][0] for i in range(3)])
    np.save(tmp_path / 'x.npy', x.numpy())
    (tmp_path / 'reload.py').write_text(RELOAD_ONNX)
    r = subprocess.run([sys.executable, tmp_path / 'reload.py', tmp_path / 'model.onnx', tmp_path / 'x.npy', tmp_path / 'y.npy'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / 'y.npy')), load_model(run, 'best', device='cpu')(x),
                               **TOLERANCES['onnx'])   # atol = rtol = 1e-4

@pytest.mark.slow   # two trainings in fresh processes: ~25 s here
def test_a_checkpoint_without_normalization_resumes_and_loads_as_the_identity(tmp_path):
    cfg = write_config(tmp_path / 'train.yml', tiny_config(total_updates=20, updates_per_epoch=10, progress=False))
    assert run_cli(cfg, env={'OMP_NUM_THREADS': '1'}).returncode == 0
    for name in ('latest.pt', 'best.pt'):   # as an ml_suite from before normalization would have written them
        st = torch.load(tmp_path / name, weights_only=True); st.pop('normalization', None); torch.save(st, tmp_path / name)
    r = run_cli(cfg, 'total_updates=30', env={'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0 and 'resumed from' in r.stdout + (tmp_path / 'training.log').read_text(), r.stderr
    st = torch.load(tmp_path / 'latest.pt', weights_only=True)
    assert st['updates'] == 30 and st['normalization']['x_mean'] is None, 'the run stays in the units it was trained in'
    from ml_suite.inference import load_model
    m = load_model(tmp_path, 'latest', device='cpu')
    x = torch.randn(2, 1, 16, 16)
    assert m.normalization.is_identity and torch.equal(m(x), m.net(x))


def test_a_bf16_input_is_normalized_in_float32_as_pytorch_promotes_it():
    "The normalization's float32 statistics and a bf16 batch: computed in float32, the same bits as before issue 17."
    import torch
    from ml_suite.data import Normalization
    from ml_suite.inference import InferenceModel
    norm = Normalization(x_mean=torch.tensor([0.5, -1.0]), x_std=torch.tensor([2.0, 3.0]),
                         y_mean=torch.tensor([1.5]), y_std=torch.tensor([0.25]))
    m = InferenceModel(torch.nn.Conv2d(2, 1, 1), norm)
    x = torch.randn(3, 2, 4, 4).to(torch.bfloat16)
    xs = (x - norm.x_mean.view(1, 2, 1, 1)) / norm.x_std.view(1, 2, 1, 1)     # the promotion 2e53168 relied on
    assert xs.dtype == torch.float32
    with torch.no_grad():
        out = m(x)
        want = m.net(xs) * norm.y_std.view(1, 1, 1, 1) + norm.y_mean.view(1, 1, 1, 1)
    assert out.dtype == torch.float32 and torch.equal(out, want)
