"Config mistakes: exit 2, one paragraph naming the key and the file, no traceback, nothing written."
import pytest
from conftest import ROOT, tiny_config, write_config, run_cli, all_files

GOOD = """\
seed: 0
dataset:
  name: heat
  size: 16
model:
  type: unet
  width: 4
batch_size: 8
total_updates: 10
optimizer:
  name: AdamW
  learning_rate: 1.0e-3
"""

CASES = {
    # name: (file text, overrides, fragments the message must hold)
    'unknown top-level key': (GOOD.replace('total_updates: 10', 'total_update: 10'), [],
                              ["unknown key 'total_update' at the top level", 'train.yml line 9', "did you mean 'total_updates'"]),
    'unknown nested key': (GOOD.replace('  learning_rate:', '  learning_rat:'), [],
                           ["unknown key 'learning_rat' in optimizer", 'train.yml line 12', "did you mean 'learning_rate'?"]),
    'wrong type': (GOOD.replace('batch_size: 8', 'batch_size: eight'), [],
                   ["batch_size", 'train.yml line 8', "must be an integer, got 'eight'"]),
    'missing required key': (GOOD.replace('total_updates: 10\n', ''), [],
                             ["missing required key 'total_updates'", 'train.yml']),
    'malformed yaml': (GOOD.replace('  width: 4', '   width: 4'), [],
                       ['train.yml line 7', 'is not valid YAML']),
    'bad override value': (GOOD, ['optimizer.learning_rate=fast'],
                           ['optimizer.learning_rate', "command-line override 'optimizer.learning_rate=fast'", 'must be a number']),
    'bad override form': (GOOD, ['total_updates'], ["override 'total_updates' is not of the form key=value"]),
    'unknown override key': (GOOD, ['optimzer.name=SGD'], ["unknown key 'optimzer' at the top level", "did you mean 'optimizer'"]),
    'unknown model key': (GOOD.replace('  width: 4', '  widht: 4'), [], ["unknown key 'widht' in model", 'train.yml line 7', "did you mean 'width'"]),
    'unknown model type': (GOOD.replace('type: unet', 'type: unett'), [], ["unknown model.type 'unett'", 'train.yml line 6', "did you mean 'unet'"]),
}

@pytest.mark.parametrize('case', CASES)
def test_config_error_exits_2_with_one_paragraph(tmp_path, case):
    text, overrides, fragments = CASES[case]
    exp = tmp_path / 'exp'
    exp.mkdir()
    (exp / 'train.yml').write_text(text)
    before = all_files(tmp_path)
    r = run_cli(exp / 'train.yml', *overrides, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    msg = r.stderr.strip()
    assert 'Traceback' not in r.stderr and 'Traceback' not in r.stdout
    assert '\n' not in msg, f"not one paragraph: {msg!r}"
    assert msg.startswith('ml-suite-train: error: ')
    for f in fragments: assert f in msg, (f, msg)
    assert all_files(tmp_path) == before, "a config error must not write files"

def test_usage_error_exits_2(tmp_path):
    r = run_cli(cwd=tmp_path)
    assert r.returncode == 2 and 'give a config file' in r.stderr

def test_valid_config_file_used_in_cases_trains(tmp_path):
    "The base text of the cases above is itself valid: the errors come from the mutations."
    (tmp_path / 'train.yml').write_text(GOOD)
    r = run_cli(tmp_path / 'train.yml', 'updates_per_epoch=5', cwd=tmp_path)
    assert r.returncode == 0, r.stderr

@pytest.mark.parametrize('name', sorted(p.name for p in (ROOT / 'configs').glob('*.yml')))
def test_shipped_configs_are_valid(name):
    from ml_suite.config import load_config
    cfg, _ = load_config(ROOT / 'configs' / name, environ={'RESULTS_DIR': '/tmp/results'})
    assert cfg.total_updates > 0

def test_options_may_come_between_the_config_and_the_overrides(tmp_path, capsys):
    "`ml-suite-train CONFIG --dry-run key=value`: the overrides after the option are read, not refused by argparse."
    from ml_suite.train import main
    (tmp_path / 'train.yml').write_text(GOOD)
    assert main([str(tmp_path / 'train.yml'), '--dry-run', 'updates_per_epoch=5', 'model.width=6']) == 0
    out = capsys.readouterr().out
    assert 'validation every 5' in out
    assert main([str(tmp_path / 'train.yml'), '--dry-run', 'model.widht=6']) == 2
    assert "did you mean 'width'" in capsys.readouterr().err
    assert not (tmp_path / 'latest.pt').exists()
