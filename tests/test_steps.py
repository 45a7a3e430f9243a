"Issue 18: each step kind and batch structure trains and validates; a wrong step is named; NaN handling applies."
from itertools import cycle
import math
import pytest
import torch
from ml_suite.core import ModelError
from ml_suite.evaluator import StepEvaluator
from ml_suite.steps import model_loss, Count
from ml_suite.trainer import Trainer, TrainSettings, TrainerParts
from ml_suite.nonfinite import NonFiniteGuard


class CharLM(torch.nn.Module):
    "nanoGPT's shape: forward(idx, targets) -> (logits, loss)."
    def __init__(self, v=16, d=16):
        super().__init__()
        self.emb, self.head = torch.nn.Embedding(v, d), torch.nn.Linear(d, v)
    def forward(self, idx, targets=None):
        logits = self.head(self.emb(idx))
        loss = None if targets is None else torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


class HFStyle(CharLM):
    "Hugging Face's shape: a mapping with `loss` (ModelOutput is an OrderedDict)."
    def forward(self, input_ids, labels):
        logits, loss = super().forward(input_ids, labels)
        return {'logits': logits, 'loss': loss}


class ObjStyle(CharLM):
    "An object with a `loss` attribute."
    def forward(self, idx, targets):
        logits, loss = super().forward(idx, targets)
        return type('Out', (), {'loss': loss, 'logits': logits})()


class DictField(torch.nn.Module):
    "A model fed a dict of fields, a mask and conditioning."
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 4)
        self.cond = torch.nn.Linear(1, 4)
    def forward(self, fields, cond):
        return self.net(fields['u']) * fields['mask'] + self.cond(cond)


def lm_batches(n=6, b=4, t=8):
    seq = torch.arange(64) % 16
    return [(seq[i:i + t].repeat(b, 1), seq[i + 1:i + t + 1].repeat(b, 1)) for i in range(0, n * t, t)]


def fit(model, step, train, val, updates=40, parts=None, **kw):
    torch.manual_seed(0)
    settings = TrainSettings(total_updates=updates, updates_per_epoch=updates // 2, log_every=updates // 2, **kw)
    t = Trainer(model, None, torch.optim.AdamW(model.parameters(), lr=3e-2), None, cycle(train), val,
                StepEvaluator(step), settings, parts=parts, step=step)
    return t.fit()


def ppl_step(model, batch):
    loss = model_loss(model, batch)
    return loss, {'ppl': loss.exp().detach(), 'tokens': Count(batch[0].numel())}


def dict_step(model, batch):
    pred = model(batch['fields'], batch['cond'])
    loss = torch.nn.functional.mse_loss(pred, batch['target'])
    return loss, {'pred': pred, 'target': batch['target']}


@pytest.mark.parametrize('kind', ['tuple', 'list', 'dict-hf', 'object'])
def test_model_loss_trains_and_validates_for_each_output_and_batch(kind):
    torch.manual_seed(0)
    data = lm_batches()
    if kind == 'tuple': model = CharLM()
    elif kind == 'list': model, data = CharLM(), [list(b) for b in data]
    elif kind == 'dict-hf': model, data = HFStyle(), [{'input_ids': x, 'labels': y} for x, y in data]
    else: model = ObjStyle()
    first = model_loss(model, data[0]).item()
    t = fit(model, model_loss, data, data)
    assert t.updates == 40 and [r['update'] for r in t.history] == [20, 40]
    assert t.history[-1]['val_loss'] < 0.5 * first
    assert math.isfinite(t.history[-1]['train_loss'])


def test_extra_scalars_and_counts_land_in_rows_and_validation():
    data = lm_batches()
    t = fit(CharLM(), ppl_step, data, data)
    r = t.history[-1]
    # train_ppl is the mean of exp(loss) over the row's updates: at least exp(mean loss)
    assert r['train_ppl'] >= math.exp(r['train_loss']) - 1e-6
    assert r['tokens_per_s'] == pytest.approx(r['updates_per_s'] * 32, rel=1e-6)
    assert r['val_ppl'] == pytest.approx(math.exp(r['val_loss']), rel=1e-5)   # one repeated sequence: equal losses


def test_dict_batches_with_metrics_from_pred_and_target():
    from ml_suite.losses import METRICS
    torch.manual_seed(0)
    def batch():
        u = torch.randn(8, 4)
        return {'fields': {'u': u, 'mask': torch.ones(8, 4)}, 'cond': torch.ones(8, 1), 'target': 2 * u, 'tag': 'x'}
    data = [batch() for _ in range(4)]
    model = DictField()
    t = Trainer(model, None, torch.optim.Adam(model.parameters(), lr=3e-2), None, cycle(data), data,
                StepEvaluator(dict_step, {'mae': METRICS['mae']}), TrainSettings(total_updates=60, updates_per_epoch=30,
                                                                              log_every=30), step=dict_step).fit()
    r = t.history[-1]
    assert r['val_loss'] < t.history[0]['val_loss'] and 'val_mae' in r and 'train_pred' not in r
    with torch.no_grad():
        mae = sum((model(b['fields'], b['cond']) - b['target']).abs().mean() for b in data) / len(data)
    assert r['val_mae'] == pytest.approx(mae.item(), rel=1e-5)


def test_accumulated_custom_step_matches_one_big_batch():
    torch.manual_seed(1)
    data = lm_batches(n=6, b=4)
    big = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(data[::2], data[1::2])]
    torch.manual_seed(2)
    t1 = fit(CharLM(), model_loss, data, None, updates=10, grad_accum_steps=2)
    torch.manual_seed(2)
    t2 = fit(CharLM(), model_loss, big, None, updates=10)
    for a, b in zip(t1.raw_model.parameters(), t2.raw_model.parameters()): torch.testing.assert_close(a, b)
    assert t1.samples == t2.samples == 80


@pytest.mark.parametrize('step, words', [
    (lambda m, b: 'loss', "returned a str, not a loss tensor"),
    (lambda m, b: model_loss(m, b).detach(), "does not depend on the model's parameters"),
    (lambda m, b: m(*b)[0], "returned a loss of (4, 8, 16) float32, not one floating-point number"),
    (lambda m, b: (model_loss(m, b), {'acc': torch.ones(3)}), "the extra 'acc' as (3,) float32"),
    (lambda m, b: m(b[0], b[1], b[0]), "raised TypeError on a batch of ((4, 8) int64, (4, 8) int64)"),
    (lambda m, b: model_loss(m, b[:1]), "model_loss: CharLM returned"),
])
def test_a_wrong_step_is_named_at_the_first_update(step, words):
    data = lm_batches()
    with pytest.raises(ModelError) as e: fit(CharLM(), step, data, None, updates=4)
    assert words in str(e.value), str(e.value)


def test_nonfinite_guard_skips_a_custom_steps_nan_loss():
    data = lm_batches()
    calls = {'n': 0}
    def sometimes_nan(model, batch):
        calls['n'] += 1
        loss = model_loss(model, batch)
        return loss * float('nan') if calls['n'] in (3, 4) else loss
    t = fit(CharLM(), sometimes_nan, data, None, updates=10, parts=TrainerParts(guard=NonFiniteGuard('skip', 5)))
    assert t.updates == 10 and t.skipped_nonfinite == 2
    assert all(torch.isfinite(p).all() for p in t.raw_model.parameters())
