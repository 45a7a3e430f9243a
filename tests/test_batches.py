"""Issue 18, batches of any structure at the data level (no training): `CheckedDataset(pairs=False)` batches dicts,
nested dicts and tuples as the dataset gives them, honours the dataset's own `collate_fn`, and keeps naming the
sample (and now the path inside it) that cannot be read or batched; `pairs=True` (the supervised step) is unchanged."""
import pytest, torch
from torch.utils.data import Dataset
from ml_suite.core import ConfigError
from ml_suite.data import (BatchStream, CheckedDataset, DataError, Normalization, SplitDataset, dataset_normalization,
                           eval_loader)

class Fields(Dataset):
    "Nested dict samples: a field and its mask, a conditioning vector, a class label and a name."
    def __init__(self, n=12, bad=None): self.n, self.bad = n, bad or {}
    def __len__(self): return self.n
    def sample(self, i):
        u = torch.full((3, 9), float(i))
        return {'fields': {'u': u, 'mask': u > 4}, 'cond': torch.tensor([i, 1.0]), 'label': i % 3, 'name': f's{i}'}
    def __getitem__(self, i):
        if self.bad.get(i) == 'raise': raise OSError(f'truncated record {i}')
        s = self.sample(i)
        if self.bad.get(i) == 'narrow': s['fields']['u'] = s['fields']['u'][:, :8]
        if self.bad.get(i) == 'extra': s['fields']['extra'] = s['cond']
        if self.bad.get(i) == 'missing': del s['cond']
        return s

class Tokens(Dataset):
    "`(idx, targets)` samples of a language model, and one of 3 parts where `long` says so."
    def __init__(self, n=12, long=()): self.n, self.long = n, set(long)
    def __len__(self): return self.n
    def __getitem__(self, i):
        idx = torch.arange(i, i + 5) % 7
        return (idx, (idx + 1) % 7, idx) if i in self.long else (idx, (idx + 1) % 7)

class Padded(Dataset):
    "Sequences of lengths 1, 2, 3, ..., batched by the dataset's own `collate_fn` (padded to the longest)."
    calls = 0
    def __init__(self, n=8, fail=False): self.n, self.fail = n, fail
    def __len__(self): return self.n
    def __getitem__(self, i): return {'idx': torch.arange(1, i + 2)}
    def collate_fn(self, samples):
        Padded.calls += 1
        if self.fail: raise ValueError(f'cannot pad {len(samples)} samples')
        return {'idx': torch.nn.utils.rnn.pad_sequence([s['idx'] for s in samples], batch_first=True),
                'lengths': torch.tensor([len(s['idx']) for s in samples])}

def first_error(ds, batch_size=4, workers=0):
    with pytest.raises(DataError) as e: list(eval_loader(ds, batch_size, num_workers=workers))
    return str(e.value)

def test_dict_and_nested_samples_batch_as_they_are():
    b = next(iter(eval_loader(CheckedDataset(Fields(), 'train', pairs=False), 4)))
    assert b['fields']['u'].shape == (4, 3, 9) and b['fields']['mask'].dtype == torch.bool
    assert b['cond'].shape == (4, 2) and b['label'].tolist() == [0, 1, 2, 0] and b['name'] == ['s0', 's1', 's2', 's3']
    x, y = next(iter(eval_loader(CheckedDataset(Tokens(), 'train', pairs=False), 4)))
    assert x.shape == y.shape == (4, 5) and x.dtype == torch.int64 and torch.equal(y, (x + 1) % 7)

def test_a_stream_of_dict_batches_resumes_exactly():
    ds = CheckedDataset(Fields(n=20), 'train', pairs=False)
    a = BatchStream(ds, 4, seed=3)
    [next(a) for _ in range(3)]
    sd, rest = a.state_dict(), [next(a)['cond'] for _ in range(4)]
    b = BatchStream(CheckedDataset(Fields(n=20), 'train', pairs=False), 4, seed=3)
    b.load_state_dict(sd)
    assert all(torch.equal(next(b)['cond'], r) for r in rest)

def test_the_datasets_own_collate_fn_is_used():
    Padded.calls = 0
    b = next(iter(eval_loader(CheckedDataset(Padded(), 'train', pairs=False), 3)))
    assert Padded.calls == 1 and b['idx'].tolist() == [[1, 0, 0], [1, 2, 0], [1, 2, 3]]
    assert b['lengths'].tolist() == [1, 2, 3]
    # a fractional split: the whole dataset's collate_fn
    sd = SplitDataset(Padded(), [4, 1], 'val')
    assert next(iter(eval_loader(CheckedDataset(sd, 'val', pairs=False), 2)))['lengths'].tolist() == [5, 2]

def test_an_error_in_the_datasets_collate_fn_names_it_with_the_traceback_chained():
    ds = CheckedDataset(Padded(fail=True), 'train', pairs=False)
    with pytest.raises(DataError) as e: next(iter(eval_loader(ds, 3)))
    msg = str(e.value)
    assert msg.startswith("Padded (split 'train'): Padded.collate_fn raised ValueError: cannot pad 3 samples "
                          "(batching the samples [0, 1, 2])."), msg
    assert "The fault is in the dataset's own collate_fn" in msg
    assert isinstance(e.value.__cause__, ValueError)

def test_a_mismatched_tensor_inside_a_dict_names_its_key_path():
    msg = first_error(CheckedDataset(Fields(bad={6: 'narrow'}), 'train', pairs=False))
    assert msg.startswith("Fields (split 'train'): sample 6's ['fields']['u'] has shape (3, 8) float32 but sample "
                          "4's has shape (3, 9) float32; the samples of a batch must have one structure"), msg
    assert 'give Fields a collate_fn method that batches them' in msg
    # in a worker process: the same paragraph, and which worker
    msg = first_error(CheckedDataset(Fields(bad={1: 'narrow'}), 'train', pairs=False), workers=1)
    assert "sample 1's ['fields']['u'] has shape (3, 8) float32 but sample 0's" in msg
    assert 'in DataLoader worker process 0' in msg

@pytest.mark.parametrize('bad, expect', [
    ('extra', "sample 5's ['fields'] has keys ['u', 'mask', 'extra'] but sample 4's has ['u', 'mask']"),   # stacks
    ('missing', "sample 5 has keys ['fields', 'label', 'name'] but sample 4 has ['fields', 'cond', 'label', 'name']")])
def test_a_sample_of_another_structure_is_named(bad, expect):
    assert f"Fields (split 'train'): {expect};" in first_error(CheckedDataset(Fields(bad={5: bad}), 'train',
                                                                            pairs=False))

def test_a_tuple_of_another_length_is_named():
    msg = first_error(CheckedDataset(Tokens(long={2}), 'train', pairs=False))
    assert "Tokens (split 'train'): sample 2 is a tuple of 3 items but sample 0 is a tuple of 2;" in msg, msg

def test_pairs_keep_refusing_a_dict_with_todays_message():
    msg = first_error(CheckedDataset(Fields(), 'train'))
    assert msg.startswith("Fields (split 'train') sample 0 is a dict with keys ['fields', 'cond', 'label', 'name']; "
                          "a sample must be a pair (input, target). Return a tuple from Fields.__getitem__"), msg
    assert "Tokens (split 'train') sample 2 is a tuple of 3 items" in first_error(CheckedDataset(Tokens(long={2}),
                                                                                                 'train'))

@pytest.mark.parametrize('at', [2, 6])   # in the first batch (checked sample by sample), in a later one
def test_a_read_failure_in_a_dict_dataset_keeps_its_message(at):
    msg = first_error(CheckedDataset(Fields(bad={at: 'raise'}), 'train', pairs=False))
    assert msg.startswith(f"Fields (split 'train') failed to give sample {at}: Fields.__getitem__({at}) raised "
                          f"OSError: truncated record {at}."), msg

def test_normalization_applies_to_pairs_only():
    ds = CheckedDataset(Tokens(), 'train', pairs=False)
    Tokens.normalize = True            # the class asks by default: not for samples read as they are
    try: assert dataset_normalization(ds).is_identity
    finally: del Tokens.normalize
    with pytest.raises(ConfigError, match=r"dataset\.normalize asks for normalization, but this run reads the "
                                          r"samples of Tokens as they are .* Set dataset\.normalize: false"):
        dataset_normalization(ds, True)
    with pytest.raises(ConfigError, match='dataset.normalize'): ds.norm = Normalization(x_mean=[0.], x_std=[2.])
    with pytest.raises(ConfigError, match="Fields sample 0 is a dict with keys"): dataset_normalization(Fields(), True)
    # statistics loaded in place (a resume) are refused when the samples are read
    ds.norm.load_state_dict({'x_mean': [0.], 'x_std': [2.]})
    with pytest.raises(ConfigError, match='dataset.normalize'): next(iter(eval_loader(ds, 4)))

def test_pairs_are_batched_by_the_datasets_collate_fn_then_normalized():
    class Scaled(Tokens):
        def __getitem__(self, i): x, y = super().__getitem__(i); return x.float()[None], y.float()[None]
        def collate_fn(self, samples):
            return torch.stack([s[0] for s in samples]) * 10, torch.stack([s[1] for s in samples])
    ds = CheckedDataset(Scaled(), 'train', Normalization(x_mean=[1.], x_std=[2.]))
    x, y = next(iter(eval_loader(ds, 4)))
    raw = torch.stack([Scaled()[i][0] for i in range(4)])
    assert torch.equal(x, (raw * 10 - 1) / 2) and y.shape == (4, 1, 5)
