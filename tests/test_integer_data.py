"""Class-index targets and integer inputs keep their dtype everywhere (issue 16, item 4): a language-model-like model
(Embedding -> Linear, int64 token ids in, int64 next tokens as targets) trains with cross_entropy and accuracy past
validation, the dry run runs a validation batch, a metric that cannot take the targets is one paragraph, and
predict/export keep int64 inputs, with a dynamic batch and sequence length in the exported program."""
import sys
from pathlib import Path
import numpy as np
import pytest, torch
from conftest import write_config, read_rows

LM_CODE = '''
import torch
from torch import nn

class Tokens(torch.utils.data.Dataset):
    "Token ids (T,) and their successors mod V: a next-token task a tiny model learns in a few updates."
    def __init__(self, split='train', n=64, T=8, V=11, last=False):
        g = torch.Generator().manual_seed(0 if split == 'train' else 1)
        self.x = torch.randint(0, V, (n, T), generator=g)
        self.y = (self.x + 1) % V
        if last: self.y = self.y[:, -1]                       # one class per sequence: (N, C) logits
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return self.x[i], self.y[i]

class LM(nn.Module):
    def __init__(self, V=11, d=16, last=False):
        super().__init__(); self.emb, self.head, self.last = nn.Embedding(V, d), nn.Linear(d, V), last
    def forward(self, x):
        out = self.head(self.emb(x))                          # (B, T) int64 -> (B, T, V) logits
        return out[:, -1] if self.last else out
'''
MOD = 'h3_tokens_lm'

def lm_config(folder:Path, **over) -> Path:
    (folder / f'{MOD}.py').write_text(LM_CODE)
    cfg = dict(run_dir=str(folder / 'run'), seed=0, dataset=dict(name=f'{MOD}:Tokens'),
               model=dict(type=f'{MOD}:LM', criterion='cross_entropy'), metrics=['accuracy'], batch_size=8,
               total_updates=20, updates_per_epoch=10, log_every=10, progress=False,
               optimizer=dict(name='AdamW', learning_rate=3e-3))
    return write_config(folder / 'train.yml', {**cfg, **over})

@pytest.fixture(scope='module')
def lm_run(tmp_path_factory):
    "A trained language-model run (the issue's reproduction: it crashed at the first validation)."
    from ml_suite.train import train
    folder = tmp_path_factory.mktemp('lm')
    t = train(lm_config(folder))
    yield folder / 'run', t
    sys.modules.pop(MOD, None)

def test_int64_targets_train_with_cross_entropy_and_accuracy_past_validation(lm_run):
    run, t = lm_run
    assert t.finished and t.updates == 20
    vals = [r for r in read_rows(run) if 'val_loss' in r]
    assert [r['update'] for r in vals] == [10, 20], vals
    assert all(0 <= r['val_accuracy'] <= 1 for r in vals)
    assert vals[-1]['val_loss'] < vals[0]['val_loss'], 'it learns'

def test_int64_class_targets_of_N_C_logits_survive_validation(tmp_path):
    "The issue's crash: at the first validation, `expected target dtype to be Long or Byte, but got Float`."
    from ml_suite.train import train
    try: t = train(lm_config(tmp_path, dataset=dict(name=f'{MOD}:Tokens', last=True), model=dict(type=f'{MOD}:LM',
                                criterion='cross_entropy', last=True), total_updates=10, updates_per_epoch=5))
    finally: sys.modules.pop(MOD, None)
    assert t.finished
    assert [r['update'] for r in read_rows(tmp_path / 'run') if 'val_accuracy' in r] == [5, 10]

def test_cross_entropy_and_accuracy_take_the_class_axis_at_1_or_last():
    from ml_suite.losses import LOSSES, METRICS
    F, ce = torch.nn.functional, LOSSES['cross_entropy']()
    lm, tok = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))        # (B, T, V) / (B, T): last
    seg, mask = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))  # (N, C, H, W) / (N, H, W): axis 1
    cls, lab = torch.randn(6, 4), torch.randint(0, 4, (6,))               # (N, C) / (N,)
    torch.testing.assert_close(ce(lm, tok), F.cross_entropy(lm.reshape(-1, 7), tok.reshape(-1)))
    torch.testing.assert_close(ce(seg, mask), F.cross_entropy(seg, mask))
    torch.testing.assert_close(ce(cls, lab), F.cross_entropy(cls, lab))
    probs = torch.softmax(torch.randn(2, 3, 4, 4), 1)                     # probability targets: PyTorch's own rule
    torch.testing.assert_close(ce(seg, probs), F.cross_entropy(seg, probs))
    for p, t, ax in [(lm, tok, 2), (seg, mask, 1), (cls, lab, 1)]:
        acc = METRICS['accuracy'](); acc.update(p, t)
        assert acc.compute() == pytest.approx((p.argmax(ax) == t).float().mean().item())
    # both rules fit (4, 8, 8) / (4, 8): PyTorch's axis 1
    p, t = torch.randn(4, 8, 8), torch.randint(0, 8, (4, 8))
    torch.testing.assert_close(ce(p, t), F.cross_entropy(p, t))
    with pytest.raises(ValueError, match=r'predictions of shape \(4, 10\) do not fit class-index targets of shape \(4, 3\)'):
        ce(torch.randn(4, 10), torch.randint(0, 10, (4, 3)))

def test_metrics_keep_integer_targets_integer():
    from ml_suite.losses import Metric
    seen = []
    class Spy(Metric):
        def batch(self, p, t): seen.append((p.dtype, t.dtype)); return 0., 1
    Spy().update(torch.randn(2, 3, dtype=torch.float16), torch.tensor([1, 2]))
    Spy().update(torch.randn(2), torch.tensor([True, False]))
    Spy().update(torch.randn(2), torch.randn(2, dtype=torch.float64))
    assert seen == [(torch.float32, torch.int64), (torch.float32, torch.bool), (torch.float32, torch.float32)]

def test_dry_run_runs_one_validation_batch_and_names_a_metric_that_cannot_take_the_targets(tmp_path, capfd):
    from ml_suite.train import main
    try:
        cfg = lm_config(tmp_path)
        assert main([str(cfg), '--dry-run']) == 0
        out = capfd.readouterr().out
        assert 'validation      one batch: val_loss' in out and 'val_accuracy' in out, out
        assert not (tmp_path / 'run').exists()
        # rel_l2 compares fields of the predictions' shape: it cannot take (B, T) class indices against (B, T, V) logits.
        # Training would find out only at the first validation; the dry run finds out now.
        assert main([str(cfg), '--dry-run', 'metrics=[accuracy, rel_l2]']) == 1
        err = capfd.readouterr().err
        assert 'the metric rel_l2 (RelL2) cannot take predictions of shape (8, 8, 11) float32 and targets of shape ' \
               '(8, 8) int64' in err, err
        assert 'Traceback' not in err and err.count('rel_l2 (RelL2)') == 1, err
    finally: sys.modules.pop(MOD, None)

def test_a_metric_failing_at_the_first_validation_is_one_paragraph(tmp_path, capfd):
    from ml_suite.train import main
    try: code = main([str(lm_config(tmp_path, metrics=['accuracy', 'rel_l2']))])
    finally: sys.modules.pop(MOD, None)
    err = capfd.readouterr().err
    assert code == 1, err
    assert 'validation failed: the metric rel_l2 (RelL2) cannot take predictions' in err, err
    assert 'Traceback' not in err and err.count('validation failed') == 1, err

def test_predict_and_export_keep_int64_token_ids_with_a_dynamic_batch_and_sequence(lm_run, tmp_path):
    from ml_suite.inference import load_model, predict, export_model
    run, _ = lm_run
    model = load_model(run, device='cpu')
    ids = torch.randint(0, 11, (3, 8))
    inp = tmp_path / 'inputs'; inp.mkdir()
    for i, x in enumerate(ids): np.save(inp / f'seq_{i}.npy', x.numpy())       # int64 arrays
    torch.testing.assert_close(predict(model, inp, progress=False), model(ids))
    assert predict(model, 'val', progress=False).shape == (64, 8, 11)
    rep = export_model(model, tmp_path / 'lm.pt2', dynamic=['seq=1'])
    assert rep['input_shape'] == ['batch', 'seq'] and rep['input_dtype'] == 'int64' and not rep['warnings'], rep
    prog = torch.export.load(tmp_path / 'lm.pt2').module()
    for b, t in [(2, 8), (5, 8), (3, 5)]:
        x = torch.randint(0, 11, (b, t))
        torch.testing.assert_close(prog(x), model(x), atol=1e-5, rtol=1e-5)
    rep = export_model(model, tmp_path / 'lm_batch.pt2')                       # batch only: the length is the training one
    assert rep['input_shape'] == ['batch', 8], rep
    prog = torch.export.load(tmp_path / 'lm_batch.pt2').module()
    torch.testing.assert_close(prog(ids[:2]), model(ids[:2]), atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception): prog(torch.randint(0, 11, (2, 5)))          # a static length refuses another one

def test_export_cli_takes_dynamic_dims_and_a_model_that_fixes_its_batch_exports_static_with_a_warning(lm_run, tmp_path, capsys, caplog):
    from ml_suite.inference import export_main, export_model, InferenceModel
    run, _ = lm_run
    assert export_main([str(run), '--out', str(tmp_path / 'a.pt2'), '--dynamic', 'seq=1']) == 0
    assert "(input ['batch', 'seq'])" in capsys.readouterr().out
    assert export_main([str(run), '--out', str(tmp_path / 'b.pt2'), '--dynamic', '3']) == 2
    assert 'dynamic dimension 3 is not one of the input' in capsys.readouterr().err
    class FixedBatch(torch.nn.Module):
        def forward(self, x): return x.view(4, -1) * 2
    with caplog.at_level('WARNING', logger='ml_suite'):
        rep = export_model(InferenceModel(FixedBatch()), tmp_path / 'fixed.pt2', example=torch.randn(4, 3))
    assert rep['input_shape'] == [4, 3]
    warns = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert len(warns) == 1 and 'does not allow a dynamic batch' in warns[0] and 'static batch of 4' in warns[0], warns

def test_onnx_export_of_token_ids_with_a_dynamic_sequence(lm_run, tmp_path):
    ort = pytest.importorskip('onnxruntime')   # the optional `onnx` extra
    from ml_suite.inference import load_model, export_model
    model = load_model(lm_run[0], device='cpu')
    rep = export_model(model, tmp_path / 'lm.onnx', dynamic=['seq=1'])
    assert rep['input_shape'] == ['batch', 'seq'] and rep['input_dtype'] == 'int64', rep
    sess = ort.InferenceSession(str(tmp_path / 'lm.onnx'), providers=['CPUExecutionProvider'])
    for b, t in [(2, 8), (5, 3)]:
        x = torch.randint(0, 11, (b, t))
        got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
        torch.testing.assert_close(got, model(x), atol=1e-4, rtol=1e-4)
