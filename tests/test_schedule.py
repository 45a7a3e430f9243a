"The chained warmup -> cosine -> cooldown schedule, at given updates, in a unit and in a real run."
import math, torch
from ml_suite.optim import build_optimizer, build_lr_scheduler
from conftest import tiny_config, write_config, run_cli, read_rows

STAGES = dict(first_stage=dict(name='LinearLR', start_factor=0.1, end_factor=1.0, num_updates=10),
              second_stage=dict(name='CosineAnnealingLR', num_updates=-1, eta_min=0.1),
              third_stage=dict(name='LinearLR', start_factor=0.1, end_factor=0.0, num_updates=10))
# lr at update u (the LR that update used) with a peak of 1.0 over 100 updates:
# warmup 0.1 -> 1.0 over updates 0-9; cosine 1.0 -> 0.1 over 10-89 (T_max 80); cooldown 0.1 -> 0 over 90-99.
EXPECTED = {0: 0.1, 5: 0.55, 9: 0.91, 10: 1.0, 30: 0.868198, 50: 0.55, 70: 0.231802, 89: 0.100347, 90: 0.1, 95: 0.05, 99: 0.01}

def test_three_stage_schedule_values():
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], 'SGD', learning_rate=1.0)
    sched = build_lr_scheduler(opt, list(STAGES.values()), total_updates=100)
    seen = []
    for _ in range(100):
        seen.append(opt.param_groups[0]['lr']); opt.step(); sched.step()
    for u, lr in EXPECTED.items(): assert math.isclose(seen[u], lr, abs_tol=1e-6), (u, seen[u], lr)

def test_schedule_in_a_real_run_logs_the_same_values(tmp_path):
    stages = {**STAGES, 'second_stage': {**STAGES['second_stage'], 'eta_min': 1e-4}}  # eta_min is absolute: 0.1 x peak
    cfg = tiny_config(total_updates=100, updates_per_epoch=50, log_every=5, lr_scheduler=stages,
                      optimizer=dict(name='SGD', learning_rate=1.0e-3))
    r = run_cli(write_config(tmp_path / 'train.yml', cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lrs = {row['update']: row['lr'] for row in read_rows(tmp_path)}
    # the row for update u reports the LR that the u-th update used (0-based update u-1), times the peak 1e-3
    logged = {10: 0.91, 30: 0.880445, 50: 0.567667, 70: 0.24454, 90: 0.100347, 95: 0.06}
    for u, lr in logged.items(): assert math.isclose(lrs[u] / 1e-3, lr, abs_tol=1e-6), (u, lrs[u])
