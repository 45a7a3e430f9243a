"""A user's model and dataset, given to `ml-suite-train` by import path in `overhead.py --path cli`.

An MLP 256-256-256-1 and a dataset of random tensors (one sample a pair of a 256-vector and one target), as a user's
own module would define them: nothing here comes from ml_suite.
"""
import torch
from torch.utils.data import Dataset


class MLP(torch.nn.Module):
    "Three linear layers with ReLU between them."
    def __init__(self, in_features:int=256, hidden:int=256, outputs:int=1):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(in_features, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, outputs))

    def forward(self, x): return self.net(x)


class TensorData(Dataset):
    "`num_samples` random pairs `(x, y)`, drawn once from `seed` and the split; sample `i` is row `i`."
    def __init__(self, split:str='train', num_samples:int=4096, in_features:int=256, outputs:int=1, seed:int=0):
        g = torch.Generator().manual_seed(seed * 3 + {'train': 0, 'val': 1, 'test': 2}[split])
        self.x = torch.randn(num_samples, in_features, generator=g)
        self.y = torch.randn(num_samples, outputs, generator=g)

    def __len__(self): return len(self.x)

    def __getitem__(self, i): return self.x[i], self.y[i]
