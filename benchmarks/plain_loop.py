"""The hand-written loop that `overhead.py --contenders ml-suite-train` compares the CLI with.

What a user would write for the model and dataset of `user_mlp.py`: a DataLoader, AdamW, zero_grad, forward, loss,
backward, step, and the loss printed every `--log-every` updates. The only thing it takes from ml_suite's design is
the sample order, so that the final weights can be compared bit for bit: epoch `e` reads a permutation seeded by
`mix_seed(seed, 'order', e)` (written out below, as in ml_suite.data), `batch` samples at a time, the tail dropped.

    python benchmarks/plain_loop.py --updates 2200 --out weights.pt
    python benchmarks/plain_loop.py --updates 2200 --out weights.pt --ema-decay 0.999   # and an EMA, in weights.ema.pt

With `--ema-decay` it keeps an exponential moving average of the weights as PyTorch documents it, with
`AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))` and `update_parameters(model)` after every step.
"""
import argparse, hashlib, sys
from pathlib import Path
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from user_mlp import MLP, TensorData  # noqa: E402


def mix_seed(*parts)->int:
    "The 63-bit seed ml_suite derives from `parts` (ml_suite.data.mix_seed)."
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), 'little') & ((1 << 63) - 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--updates', type=int, required=True)
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--samples', type=int, default=4096)
    p.add_argument('--in-features', type=int, default=256)
    p.add_argument('--hidden', type=int, default=256)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--log-every', type=int, default=10)
    p.add_argument('--out', help='save the final state dict here')
    p.add_argument('--ema-decay', type=float, default=None, help='keep an EMA of the weights (saved beside --out)')
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = TensorData('train', num_samples=a.samples, in_features=a.in_features)
    torch.manual_seed(a.seed)
    model = MLP(a.in_features, a.hidden, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    crit = torch.nn.MSELoss()
    ema = None
    if a.ema_decay is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(a.ema_decay))
    step, epoch = 0, 0
    while step < a.updates:
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(mix_seed(a.seed, 'order', epoch)))
        for x, y in DataLoader(ds, batch_size=a.batch, sampler=order.tolist(), drop_last=True):
            loss = crit(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if ema is not None: ema.update_parameters(model)
            step += 1
            if step % a.log_every == 0: print(f"update {step} loss {loss.item():.5g}", flush=True)
            if step == a.updates: break
        epoch += 1
    if a.out: torch.save(model.state_dict(), a.out)
    if a.out and ema is not None: torch.save(ema.module.state_dict(), Path(a.out).with_suffix('.ema.pt'))
    return 0


if __name__ == '__main__': sys.exit(main())
