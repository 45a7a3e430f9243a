"A GPT-style model that computes its own loss trains from a config alone (`model.step`), in process and by the CLI."
import math, textwrap
import torch
from ml_suite.train import train
from ml_suite.inference import load_model
from conftest import run_cli, read_rows, write_config

# nanoGPT's shape: forward(idx, targets) -> (logits, loss); a dataset of (idx, targets) windows of text that ships
# with Python; a step of its own that adds perplexity and a token count
LM_MODULE = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.nn import functional as F
    from pydoc_data.topics import topics
    from ml_suite.steps import model_loss, Count

    class Chars(torch.utils.data.Dataset):
        def __init__(self, split, context=16, chars=40_000):
            text = ' '.join(topics[k] for k in sorted(topics))[:chars].encode('ascii', 'replace')
            data = torch.tensor(list(text), dtype=torch.long)
            n = int(0.9 * len(data))
            self.data, self.context = (data[:n] if split == 'train' else data[n:]), context
        def __len__(self): return (len(self.data) - 1) // self.context
        def __getitem__(self, i):
            c = self.data[i * self.context:(i + 1) * self.context + 1]
            return c[:-1], c[1:]

    class GPT(nn.Module):
        def __init__(self, context=16, d=32, heads=2):
            super().__init__()
            self.tok, self.pos = nn.Embedding(128, d), nn.Embedding(context, d)
            self.block = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
            self.head = nn.Linear(d, 128)
        def forward(self, idx, targets=None):
            T = idx.shape[1]
            mask = nn.Transformer.generate_square_subsequent_mask(T, device=idx.device)
            x = self.block(self.tok(idx) + self.pos(torch.arange(T, device=idx.device)), src_mask=mask, is_causal=True)
            logits = self.head(x)
            if targets is None: return logits, None
            return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        @torch.no_grad()
        def generate(self, idx, n):
            for _ in range(n): idx = torch.cat([idx, self(idx[:, -16:])[0][:, -1:].argmax(-1)], 1)
            return idx

    def lm_step(model, batch):
        loss = model_loss(model, batch)
        return loss, {'ppl': loss.exp().detach(), 'tokens': Count(batch[0].numel())}
''')

def gpt_config(run_dir, **kw):
    return dict(dataset=dict(name='my_lm:Chars'), model=dict(type='my_lm:GPT', step='model_loss'),
                batch_size=16, total_updates=60, updates_per_epoch=30, log_every=30, val_batches=4,
                validate_at_start=True, optimizer=dict(name='AdamW', learning_rate=1e-2), progress=False,
                device='cpu', run_dir=str(run_dir), **kw)

def test_gpt_trains_from_config_alone(tmp_path):
    (tmp_path / 'my_lm.py').write_text(LM_MODULE)
    t = train(write_config(tmp_path / 'gpt.yml', gpt_config(tmp_path / 'run')))
    rows = read_rows(tmp_path / 'run')
    vals = [r['val_loss'] for r in rows if 'val_loss' in r]
    # update 0 knows nothing (ln 128 = 4.85 for uniform guesses); 60 updates learn the letters' frequencies and more
    assert rows[0]['update'] == 0 and vals[0] > 4, vals
    assert vals[-1] < 0.75 * vals[0] and rows[-1]['train_loss'] < 0.75 * vals[0], rows
    # model_loss: the model's loss alone; no metrics (they need predictions), no extra scalars
    assert t.updates == 60 and not any(k.startswith(('val_mae', 'val_rmse', 'train_ppl')) for k in rows[-1])
    gpt = load_model(tmp_path / 'run', device='cpu').module
    assert type(gpt).__name__ == 'GPT' and gpt.generate(torch.tensor([[84, 104]]), 5).shape == (1, 7)

def test_gpt_own_step_by_the_cli(tmp_path):
    (tmp_path / 'my_lm.py').write_text(LM_MODULE)
    cfg = write_config(tmp_path / 'gpt.yml', gpt_config(tmp_path / 'run'))
    r = run_cli(cfg, 'model.step=my_lm:lm_step', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = read_rows(tmp_path / 'run')
    last = rows[-1]
    assert {'train_ppl', 'val_ppl', 'tokens_per_s'} <= set(last), last
    # the mean of the batches' perplexities is at least the perplexity of their mean loss
    assert last['val_ppl'] >= math.exp(last['val_loss']) - 1e-6 and last['val_ppl'] < 0.75 * 128
    # a count is summed and timed like the samples: 16 tokens a sample
    assert math.isclose(last['tokens_per_s'], 16 * last['samples_per_s'], rel_tol=1e-6), last
    assert last['val_loss'] < 0.75 * rows[0]['val_loss']
    assert 'val_ppl' in rows[0] and 'train_ppl' not in rows[0]
