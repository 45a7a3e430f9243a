"""Secrets from the environment and `.env` never reach a file a run writes: logs, saved configs, checkpoints,
metrics, the run records, WandB's offline run files; nor the console."""
import os, secrets
from pathlib import Path
import pytest, torch, yaml
from conftest import tiny_config, write_config, run_cli

def leaks(folder: Path, values: dict) -> list:
    "Every (file, secret name) where a file under `folder` holds a secret's value, as bytes (binary files too)."
    found = []
    for p in sorted(Path(folder).rglob('*')):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            found += [(str(p.relative_to(folder)), name) for name, v in values.items() if v.encode() in data]
    return found

def test_no_secret_from_the_environment_or_dotenv_reaches_any_file_of_a_run(tmp_path):
    key, token = secrets.token_hex(20), secrets.token_urlsafe(24)
    values = {'WANDB_API_KEY': key, 'MY_SECRET_TOKEN': token}
    (tmp_path / '.env').write_text(f'MY_SECRET_TOKEN={token}\n')
    home = tmp_path / 'home'; home.mkdir()
    (tmp_path / 'tmpdir').mkdir()   # whatever wandb or torch put in temporary files is searched too
    env = {**{k: v for k, v in os.environ.items() if not k.startswith('WANDB_')}, 'WANDB_API_KEY': key, 'HOME': str(home),
           'TMPDIR': str(tmp_path / 'tmpdir')}
    cfg = tiny_config(total_updates=10, updates_per_epoch=5,
                      wandb=dict(enabled=True, mode='offline', project='secrets_test',
                                 name='exp-${MY_SECRET_TOKEN}', tags=['${WANDB_API_KEY}']))   # a careless config
    path = write_config(tmp_path / 'train.yml', cfg)
    r = run_cli(path, f'wandb.project=proj-{key}', cwd=tmp_path, env=env)   # a key typed on the command line, too
    assert r.returncode == 0, r.stderr
    # the run really wrote what is searched: WandB's offline run, checkpoints, logs, configs, metrics
    assert list((tmp_path / 'wandb').glob('offline-run-*/run-*.wandb'))
    assert {'latest.pt', 'training.log', 'resolved_config.yml', 'metrics.jsonl', 'starts.jsonl'} <= {p.name for p in tmp_path.iterdir()}
    found = leaks(tmp_path, values)
    assert found == [('.env', 'MY_SECRET_TOKEN')], found                 # only the user's own .env holds it
    saved = yaml.safe_load((tmp_path / 'resolved_config.yml').read_text())
    assert saved['wandb']['name'] == 'exp-${MY_SECRET_TOKEN}' and saved['wandb']['tags'] == ['${WANDB_API_KEY}']
    assert saved['wandb']['project'] == 'proj-${WANDB_API_KEY}'
    assert torch.load(tmp_path / 'latest.pt', weights_only=True)['config']['wandb']['tags'] == ['${WANDB_API_KEY}']
    assert key not in r.stdout + r.stderr and token not in r.stdout + r.stderr

def test_an_error_message_that_quotes_a_secret_is_masked(tmp_path, monkeypatch, capsys):
    from ml_suite.train import _main
    token = secrets.token_urlsafe(24)
    monkeypatch.setenv('MY_SECRET_TOKEN', token)
    path = write_config(tmp_path / 'train.yml', tiny_config())
    assert _main([str(path), 'optimizer.name=${MY_SECRET_TOKEN}']) == 2   # an error that quotes the value
    err = capsys.readouterr().err
    assert "unknown optimizer.name '***'" in err and token not in err, err

def test_secret_names_and_short_values():
    from ml_suite.tracking import find_secrets
    env = {'WANDB_API_KEY': 'k' * 40, 'HF_TOKEN': 'hf_' + 'x' * 30, 'DB_PASSWORD': 'hunter22', 'AWS_SECRET_ACCESS_KEY': 'a' * 40,
           'GITHUB_AUTH': 'g' * 20, 'PATH': '/usr/bin:/bin', 'DATA_DIR': '/data/some/long/path', 'API_KEY': 'short'}
    assert sorted(find_secrets(env).values()) == ['AWS_SECRET_ACCESS_KEY', 'DB_PASSWORD', 'GITHUB_AUTH', 'HF_TOKEN', 'WANDB_API_KEY']
