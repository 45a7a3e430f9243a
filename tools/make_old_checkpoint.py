"""Make tests/fixtures/ckpt_2e53168/: a run directory as ml_suite at commit 2e53168 leaves it when a run is stopped
mid-way, and the weights that commit reaches when it resumes that run to the end.

Run it on a checkout of 2e53168 (it was, once; the fixture is committed and must not be remade by later code):

    git worktree add /tmp/old 2e53168 && cp tools/make_old_checkpoint.py /tmp/old/tools/
    cd /tmp/old && OMP_NUM_THREADS=1 uv run python tools/make_old_checkpoint.py OUT_FOLDER

It trains the tiny config (`CONFIG` below) for 12 updates and stops it with SIGTERM after update 7 (a stop with a
checkpoint, not at a validation: latest.pt holds update 7). The run directory (less best.pt) is copied to
OUT_FOLDER/run; then the copy in a scratch folder is resumed to update 12 and OUT_FOLDER/final.pt gets its weights
(the model's state_dict), with OUT_FOLDER/final.json: updates, samples and the metrics rows of the resumed run.
It also checks that the stopped-and-resumed weights are bitwise those of a straight run of 12 updates.
"""
import json, os, shutil, signal, sys, tempfile
from pathlib import Path
import torch, yaml

CONFIG = dict(seed=0, dataset=dict(name='heat', size=16, modes=4, num_samples=128),
              model=dict(type='unet', width=4, depth=1, criterion='mse'), batch_size=8, total_updates=12,
              updates_per_epoch=6, log_every=3, progress=False,
              optimizer=dict(name='AdamW', learning_rate=3e-3))
STOP_AT = 7   # the update after which the run gets SIGTERM

def _run(folder:Path, stop_at:int|None=None):
    "Train `CONFIG` in `folder` (its run directory); SIGTERM after update `stop_at`."
    from ml_suite.trainer import Trainer
    from ml_suite.train import train
    step = Trainer.train_step
    def stopping_step(self, batches):
        step(self, batches)
        if self.updates == stop_at: os.kill(os.getpid(), signal.SIGTERM)
    Trainer.train_step = stopping_step
    try: return train(folder / 'train.yml')
    finally: Trainer.train_step = step

def _weights(t)->dict: return {k: v.detach().clone() for k, v in t.raw_model.state_dict().items()}

def main(out:Path):
    import ml_suite
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ('straight', 'stopped'):
            (tmp / name).mkdir()
            (tmp / name / 'train.yml').write_text(yaml.safe_dump(CONFIG, sort_keys=False))
        straight = _weights(_run(tmp / 'straight'))
        t = _run(tmp / 'stopped', STOP_AT)
        assert t.updates == STOP_AT and t.stop_action == 'exit', (t.updates, t.stop_action)
        # best.pt (update 6) is left out: a resume reads latest.pt only, and the fixture stays under 100 KB
        keep = ('train.yml', 'latest.pt', 'resolved_config.yml', '.owner.json', 'metrics.jsonl')
        if (out / 'run').exists(): shutil.rmtree(out / 'run')
        (out / 'run').mkdir()
        for f in keep: shutil.copy2(tmp / 'stopped' / f, out / 'run' / f)
        t = _run(tmp / 'stopped')
        assert t.updates == CONFIG['total_updates'] and t.finished
        final = _weights(t)
        assert all(torch.equal(final[k], straight[k]) for k in final), "stop + resume differs from a straight run"
        torch.save(final, out / 'final.pt')
        rows = [json.loads(l) for l in (tmp / 'stopped' / 'metrics.jsonl').read_text().splitlines()]
        info = dict(commit='2e53168', ml_suite=ml_suite.__version__, torch=str(torch.__version__), stop_at=STOP_AT,
                    updates=t.updates, samples=t.samples, rows=[{k: r[k] for k in ('update', 'samples')} for r in rows])
        (out / 'final.json').write_text(json.dumps(info, indent=1) + '\n')
    print(f"wrote {out}: {sorted(str(p.relative_to(out)) for p in out.rglob('*') if p.is_file())}")

if __name__ == '__main__': main(Path(sys.argv[1]))
