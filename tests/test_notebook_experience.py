"""Training in a real Jupyter kernel: a live progress display and loss plot, the stop button (a kernel interrupt)
saves a checkpoint and returns cleanly, and running the cell again resumes."""
import queue, time
from pathlib import Path
import pytest
from conftest import tiny_config

jupyter_client = pytest.importorskip('jupyter_client')

def run_cell(kc, code, timeout=300, on_msg=None):
    "Execute `code`; collect iopub messages until the kernel is idle again; return (reply, messages)."
    msg_id = kc.execute(code)
    msgs, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try: m = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            if on_msg: on_msg(None)
            continue
        if m['parent_header'].get('msg_id') != msg_id: continue
        msgs.append(m)
        if on_msg: on_msg(m)
        if m['msg_type'] == 'status' and m['content']['execution_state'] == 'idle': break
    reply = kc.get_shell_msg(timeout=60)
    return reply, msgs

def test_stop_button_saves_and_rerun_resumes(tmp_path):
    km, kc = jupyter_client.manager.start_new_kernel(kernel_name='python3', cwd=str(tmp_path))
    try:
        run = tmp_path / 'run'
        cfg = tiny_config(total_updates=100000, updates_per_epoch=50000, log_every=20, run_dir=str(run))
        run_cell(kc, f"from ml_suite.train import train\ncfg = {cfg!r}")
        interrupted = []
        def stop_when_running(m):
            # press "stop" once training has logged a few rows
            if not interrupted and (run / 'metrics.jsonl').exists() and len((run / 'metrics.jsonl').read_text().splitlines()) >= 3:
                km.interrupt_kernel(); interrupted.append(time.monotonic())
        reply, msgs = run_cell(kc, "t = train(cfg)", on_msg=stop_when_running)
        assert interrupted, 'training never got going'
        assert reply['content']['status'] == 'ok', reply['content']          # the cell returned cleanly
        kinds = {m['msg_type'] for m in msgs}
        assert {'display_data', 'update_display_data'} <= kinds, kinds      # progress line and live plot
        assert any('image/png' in m['content'].get('data', {}) for m in msgs if m['msg_type'] == 'update_display_data')
        _, out = run_cell(kc, "print(t.stop_action, t.updates)")
        text = ''.join(m['content'].get('text', '') for m in out if m['msg_type'] == 'stream')
        action, updates = text.split()
        assert action == 'interrupt' and int(updates) > 0
        import torch
        assert torch.load(run / 'latest.pt', weights_only=True)['updates'] == int(updates)
        reply, out = run_cell(kc, "t2 = train(cfg, ['total_updates=' + str(t.updates + 10)]); print('RESUMED', t2.updates)")
        text = ''.join(m['content'].get('text', '') for m in out if m['msg_type'] == 'stream')
        assert f'resumed from {run}/latest.pt at update {updates}' in text and f'RESUMED {int(updates) + 10}' in text, text
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)
