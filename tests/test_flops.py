"FLOPs per update, counted on the first update: the rows' `tflops` and `mfu`, the count itself, the peak table."
import json
import pytest
import torch
from ml_suite.dist import peak_tflops, device_peak_tflops
from ml_suite.testing import tiny_trainer, trainer_for


def test_a_cpu_runs_rows_have_tflops_and_no_mfu(tmp_path):
    "metrics.jsonl of a CPU run: `tflops` > 0 in every row after an update, no `mfu` anywhere (a CPU has no peak)."
    t = tiny_trainer(tmp_path, total_updates=6, updates_per_epoch=3, log_every=2, progress=False,
                     validate_at_start=True)
    t.fit()
    rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert [r['update'] for r in rows] == [0, 2, 3, 4, 6], rows
    assert t.recorder.flops > 0
    # update 0: nothing trained yet, nothing to divide
    assert 'tflops' not in rows[0] and all(r['tflops'] > 0 for r in rows[1:]), rows
    assert not any('mfu' in r for r in rows), rows


def _mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))


def _batches(n, b=16):
    x = torch.randn(n * b, 4, generator=torch.Generator().manual_seed(1))
    return [(xb, xb.sum(1, keepdim=True)) for xb in x.split(b)]


def test_the_count_of_an_mlp_is_the_formula_and_mfu_divides_by_the_peak():
    "Two micro-batches of 16 through a 4-8-1 MLP: forward 2·b·(i·h + h·o), backward 2·b·(i·h + 2·h·o), each."
    b, i, h, o = 16, 4, 8, 1
    t = trainer_for(_mlp(), iter(_batches(8)), total_updates=4, log_every=2, grad_accum_steps=2)
    # a GPU's peak, given by hand (the CPU has none)
    t.recorder.peak_tflops = 50.0
    t.fit()
    assert t.recorder.flops == 2 * (2 * b * (i * h + h * o) + 2 * b * (i * h + 2 * h * o))
    for r in t.history:
        assert r['tflops'] == pytest.approx(t.recorder.flops * r['updates_per_s'] / 1e12)
        assert r['mfu'] == pytest.approx(r['tflops'] / 50.0)


def test_counting_the_first_update_leaves_the_weights_of_a_plain_loop_bitwise():
    "Dropout draws random numbers and accumulation sums gradients: an extra pass for the count would change both."
    updates, accum, lr = 4, 2, 0.1
    batches = _batches(updates * accum)
    model = _mlp()
    t = trainer_for(model, iter(batches), lr=lr, total_updates=updates, log_every=2, grad_accum_steps=accum)
    plain = _mlp()
    plain.load_state_dict(model.state_dict())
    torch.manual_seed(2)
    t.fit()
    assert t.recorder.flops > 0
    torch.manual_seed(2)
    opt = torch.optim.SGD(plain.parameters(), lr=lr)
    for u in range(updates):
        for x, y in batches[u * accum:(u + 1) * accum]: (torch.nn.functional.mse_loss(plain(x), y) / accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for a, p in zip(model.parameters(), plain.parameters()): assert torch.equal(a, p)


def test_the_peak_of_a_few_devices():
    "By the names `torch.cuda.get_device_name` gives; whole words, so `L4` is not the `L40S` and `A10` not an `A1000`."
    names = {'NVIDIA H100 80GB HBM3': 989.0, 'NVIDIA H100 PCIe': 756.0, 'NVIDIA H200': 989.0,
             'NVIDIA A100-SXM4-40GB': 312.0, 'NVIDIA A100 80GB PCIe': 312.0, 'NVIDIA L4': 121.0, 'NVIDIA L40S': 362.0,
             'NVIDIA A10G': 125.0, 'Tesla V100-SXM2-16GB': 125.0, 'Tesla T4': 65.0, 'NVIDIA GeForce RTX 4090': 165.0,
             'NVIDIA RTX A1000': None, 'NVIDIA GeForce GTX 1080 Ti': None}
    assert {n: peak_tflops(n) for n in names} == names
    assert device_peak_tflops(torch.device('cpu')) is None


def test_a_resumed_run_takes_the_count_from_its_checkpoint_and_counts_nothing_again(tmp_path):
    "The count is made at the run's first update only; a resumed process reads it from the checkpoint."
    t = tiny_trainer(tmp_path, total_updates=4, updates_per_epoch=2, log_every=2, progress=False)
    t.fit()
    assert t.recorder.flops > 0
    sd = torch.load(tmp_path / 'latest.pt', weights_only=True)
    assert sd['flops'] == t.recorder.flops
    t2 = tiny_trainer(tmp_path, total_updates=8, updates_per_epoch=2, log_every=2, progress=False)
    t2.load_state_dict(sd)
    assert t2.recorder.flops == t.recorder.flops
    # a marker: a count at the resumed process's first update would overwrite it
    t2.recorder.flops = 12345
    t2.fit()
    assert t2.recorder.flops == 12345 and all(r['tflops'] > 0 for r in t2.history)
    sd['flops'] = None   # a checkpoint from before the count: no count, no tflops
    t3 = tiny_trainer(tmp_path, total_updates=8, updates_per_epoch=2, log_every=2, progress=False)
    t3.load_state_dict(sd)
    t3.fit()
    assert t3.recorder.flops is None and not any('tflops' in r for r in t3.history)


def test_a_custom_steps_passes_are_counted():
    "A model that computes its own loss (`model_loss`): its embedding lookup is free, its Linear head is counted."
    from itertools import cycle
    from ml_suite.steps import model_loss
    from ml_suite.trainer import Trainer, TrainSettings
    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16)
        def forward(self, idx, targets):
            logits = self.head(self.emb(idx))
            return logits, torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    idx = torch.randint(0, 16, (4, 5))
    m = LM()
    t = Trainer(m, None, torch.optim.SGD(m.parameters(), lr=0.1), None, cycle([(idx, idx)]),
                settings=TrainSettings(total_updates=2, log_every=2), step=model_loss).fit()
    n = 4 * 5
    # the head: forward 2·n·8·16; backward twice that (its weights' gradient, and its input's for the embedding)
    assert t.recorder.flops == 2 * n * 8 * 16 * 3 and t.history[-1]['tflops'] > 0
