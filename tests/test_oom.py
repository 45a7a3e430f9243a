"""Issue 9, out of memory: the message says which settings to lower, with this run's values, and the run resumes.

No GPU here, so the model raises the same `torch.OutOfMemoryError` that CUDA's allocator raises, from its Nth forward
pass; everything after it is ml_suite's real handling."""
import textwrap
import torch
from conftest import tiny_config, write_config, run_cli

MODEL = '''
import os, torch
from ml_suite.models import UNet
class OOMAfter(UNet):
    "A UNet whose forward number $OOM_AT (counted in this process) runs out of device memory."
    def __init__(self, **kw): super().__init__(**kw); self.calls = 0
    def forward(self, x):
        self.calls += 1
        if self.calls == int(os.environ.get('OOM_AT', '0')):
            raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which 1.20 GiB is free.')
        return super().forward(x)
'''

def test_out_of_memory_names_the_settings_to_lower_and_the_run_resumes(tmp_path):
    (tmp_path / 'oom_model.py').write_text(textwrap.dedent(MODEL))
    cfg = tiny_config(model=dict(type='oom_model:OOMAfter'), batch_size=6, grad_accum_steps=2, total_updates=20,
                      updates_per_epoch=5, amp=False)
    path = write_config(tmp_path / 'train.yml', cfg)
    # forward passes: 2 per update, 22 per validation (128 samples in batches of 6): the 40th is in update 9, after the checkpoint of update 5
    r = run_cli(path, cwd=tmp_path, env={'OOM_AT': '40', 'PYTHONPATH': str(tmp_path)})
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert 'ran out of memory' in out
    assert 'batch_size (now 6 per process' in out and 'grad_accum_steps, now 2' in out
    assert 'amp (now false)' in out and 'mem_budget 1.0' in out
    assert 'rerun the same command' in out
    saved = torch.load(tmp_path / 'latest.pt', weights_only=True)['updates']
    assert 5 <= saved < 20
    r2 = run_cli(path, cwd=tmp_path, env={'OOM_AT': '0', 'PYTHONPATH': str(tmp_path)})   # "after lowering the batch size"
    assert r2.returncode == 0, r2.stderr
    assert f'resum' in (r2.stdout + r2.stderr).lower()
    assert torch.load(tmp_path / 'latest.pt', weights_only=True)['updates'] == 20
