"""The `ema` callback: the same bits as torch's `AveragedModel` with `get_ema_multi_avg_fn`, resumed bit for bit,
validation on the average, and inference (`load_model`, `ml-suite-export`) on the average by default."""
import json, shutil
from pathlib import Path
import pytest, torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from ml_suite.ema import EMA
from ml_suite.evaluator import Evaluator
from ml_suite.testing import temp_run_config, trainer_for
from ml_suite.trainer import Trainer, TrainerParts, TrainSettings


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)) for _ in range(n)]


def equal(a:dict, b:dict)->bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize('start,every', [(0, 1), (4, 3)])
def test_trainer_ema_is_averaged_model_bit_for_bit(start, every):
    data = batches(17)
    ema = EMA(decay=0.8, start=start, every=every)
    t = trainer_for(net(), iter(data), parts=TrainerParts(callbacks=[ema]), total_updates=17, log_every=100).fit()
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.8))
    for u, (x, y) in enumerate(data, 1):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if u >= start and (u - start) % every == 0: avg.update_parameters(model)
    assert equal(t.raw_model.state_dict(), model.state_dict())
    assert ema.n_averaged == int(avg.n_averaged) > 1
    assert equal(ema.module.state_dict(), avg.module.state_dict())   # the BatchNorm buffers too: copied, as torch does
    assert not torch.equal(ema.module[0].weight, t.raw_model[0].weight)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_validation_runs_on_the_average():
    val = batches(3, seed=2)
    ema, model = EMA(decay=0.7), net()
    t = Trainer(model, torch.nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), None, iter(batches(10)),
                val, Evaluator(torch.nn.MSELoss()), TrainSettings(total_updates=10, updates_per_epoch=10, log_every=5),
                TrainerParts(callbacks=[ema])).fit()
    logged = [r['val_loss'] for r in t.history if 'val_loss' in r]
    on_ema = Evaluator(torch.nn.MSELoss()).evaluate(ema.module, val)['val_loss']
    on_raw = Evaluator(torch.nn.MSELoss()).evaluate(t.raw_model, val)['val_loss']
    assert logged == [on_ema] and on_ema != on_raw


def ema_config(**over):
    "A tiny run in a temporary folder with an `ema` callback, keeping epoch_N.pt at each validation."
    return temp_run_config(**{'total_updates': 40, 'updates_per_epoch': 10, 'log_every': 10, 'progress': False,
                              'checkpoint': {'save_every_epochs': 1}, 'callbacks': [{'name': 'ema', 'decay': 0.9}],
                              **over})


def test_resume_from_update_20_ends_with_the_same_model_and_ema_bits():
    from ml_suite.train import train
    cfg = ema_config()
    run = Path(cfg['run_dir'])
    train(cfg)
    straight = torch.load(run / 'latest.pt', weights_only=True)
    assert straight['updates'] == 40
    # back to the checkpoint of update 20, and the same command again: it resumes there and trains to 40
    shutil.copy(run / 'epoch_2.pt', run / 'latest.pt')
    train(cfg)
    resumed = torch.load(run / 'latest.pt', weights_only=True)
    assert resumed['updates'] == 40
    assert equal(resumed['model'], straight['model'])
    key = next(iter(straight['callbacks']))
    assert key == '0:EMA' and straight['callbacks'][key]['n_averaged'] == 40
    assert equal(resumed['callbacks'][key]['weights'], straight['callbacks'][key]['weights'])
    assert equal(resumed['eval_model'], straight['eval_model'])
    assert not equal(straight['eval_model'], straight['model'])


def test_export_of_an_ema_run_exports_the_average(tmp_path, capsys):
    from ml_suite.train import train
    from ml_suite.inference import load_model, export_main
    from ml_suite.models import UNet
    cfg = ema_config(total_updates=20)
    run = Path(cfg['run_dir'])
    train(cfg)
    st = torch.load(run / 'best.pt', weights_only=True)
    assert equal(st['eval_model'], st['callbacks'][next(iter(st['callbacks']))]['weights'])
    ema, raw = load_model(run, device='cpu'), load_model(run, device='cpu', weights='raw')
    assert type(ema.module) is UNet and ema.module is ema.net
    assert equal(ema.module.state_dict(), st['eval_model']) and equal(raw.module.state_dict(), st['model'])
    assert (ema.weights_label, raw.weights_label) == ('EMA (eval_model)', 'trained (model)')
    assert export_main([str(run), '--out', str(tmp_path / 'm.pt2')]) == 0
    assert 'weights: EMA (eval_model)' in capsys.readouterr().out
    assert json.loads((tmp_path / 'm.pt2.json').read_text())['weights'] == 'EMA (eval_model)'
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        got, want, other = torch.export.load(tmp_path / 'm.pt2').module()(x), ema(x), raw(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - other).abs().max() > 1e-4   # not the trained weights
    assert export_main([str(run), '--out', str(tmp_path / 'r.pt2'), '--weights', 'raw']) == 0
    assert 'weights: trained (model)' in capsys.readouterr().out


def test_load_model_module_is_the_users_class(tmp_path, monkeypatch):
    "A model by import path: `load_model(run).module` is an instance of the user's class, with its own methods."
    from ml_suite.train import train
    from ml_suite.inference import load_model
    (tmp_path / 'my_ema_net.py').write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, width=4, depth=1): super().__init__(); self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)\n"
        "    def forward(self, x): return self.conv(x)\n"
        "    def twice(self, x): return 2 * self(x)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = ema_config(total_updates=10, model={'type': 'my_ema_net:Net', 'criterion': 'mse'})
    train(cfg)
    m = load_model(cfg['run_dir'], device='cpu')
    assert type(m.module).__name__ == 'Net' and m.weights == 'eval'
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad(): torch.testing.assert_close(m.module.twice(x), 2 * m.module(x))


def test_the_config_builds_the_ema_and_refuses_a_decay_out_of_range():
    import inspect
    from ml_suite.callbacks import BUILTIN_ARGS, BUILTIN_CALLBACKS
    from ml_suite.core import ConfigError
    from ml_suite.train import train
    assert BUILTIN_CALLBACKS['ema'] == 'ml_suite.ema:EMA'
    assert {k: p.default for k, p in inspect.signature(EMA).parameters.items()} == BUILTIN_ARGS['ema']
    with pytest.raises(ConfigError, match=r"decay.*1\.5") as e:
        train(ema_config(callbacks=[{'name': 'ema', 'decay': 1.5}]))
    assert e.value.exit_code == 2
