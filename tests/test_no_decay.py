"Issue 18: `optimizer.no_decay`, parameter groups without weight decay (biases and norm gains by default)."
import contextlib, io
import torch
from conftest import run_cli, tiny_config, write_config
from ml_suite.optim import param_groups
from ml_suite.testing import tiny_trainer
from ml_suite.train import main

class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Embedding(8, 4)
        self.ln = torch.nn.LayerNorm(4)
        self.proj = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 8, bias=False)

def names(model, groups) -> list:
    n = {id(p): k for k, p in model.named_parameters()}
    return [(g['weight_decay'], [n[id(p)] for p in g['params']]) for g in groups]

def test_the_default_rule_keeps_weight_decay_off_biases_and_norm_gains():
    m = Block()
    assert names(m, param_groups(m, 0.1)) == [(0.1, ['wte.weight', 'proj.weight', 'head.weight']),
                                              (0.0, ['ln.weight', 'ln.bias', 'proj.bias'])]
    assert names(m, param_groups(m, 0.1, ['ndim<2', 'wte.weight'])) == [
        (0.1, ['proj.weight', 'head.weight']), (0.0, ['wte.weight', 'ln.weight', 'ln.bias', 'proj.bias'])]
    # []: one group, every parameter decayed, in model.parameters()'s order (as before the key)
    assert names(m, param_groups(m, 0.1, [])) == [(0.1, [k for k, _ in m.named_parameters()])]

def test_a_run_builds_the_groups_from_the_config():
    t = tiny_trainer(optimizer=dict(weight_decay=0.1))
    decayed, free = t.optimizer.param_groups
    assert (decayed['weight_decay'], free['weight_decay']) == (0.1, 0.0)
    assert all(p.ndim >= 2 for p in decayed['params']) and all(p.ndim < 2 for p in free['params']) and free['params']
    t = tiny_trainer(optimizer=dict(weight_decay=0.1, no_decay=[]))
    assert len(t.optimizer.param_groups) == 1 and t.optimizer.param_groups[0]['weight_decay'] == 0.1

def test_a_glob_that_matches_no_parameter_exits_2(tmp_path):
    path = write_config(tmp_path / 'run' / 'train.yml', tiny_config(progress=False))
    r = run_cli(path, "optimizer.no_decay=[ndim<2, '*.bais']")
    assert r.returncode == 2, r.stderr
    assert "optimizer.no_decay (command-line override" in r.stderr and "holds '*.bais', which matches no parameter of "\
           "UNet (its parameters: " in r.stderr and "'*.bias'" in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr and r.stderr.count('\n') == 1, r.stderr

def test_an_entry_that_is_not_a_string_or_a_value_that_is_not_a_list_exits_2(tmp_path):
    path = write_config(tmp_path / 'run' / 'train.yml', tiny_config(optimizer=dict(no_decay=[2]), progress=False))
    for over, shown in [((), "holds 2 (a int); each entry must be the rule 'ndim<2'"),
                        (('optimizer.no_decay=ndim<2',), "optimizer.no_decay (command-line override "
                                                         "'optimizer.no_decay=ndim<2') must be a list")]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err): code = main([str(path), *over])
        assert code == 2 and shown in err.getvalue(), err.getvalue()
    assert not (tmp_path / 'run' / 'latest.pt').exists()
