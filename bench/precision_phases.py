"""Where a fastai epoch spends its time, in fp32 and in mixed precision: why the Learner gains less than a plain loop.

    python bench/precision_phases.py [--data retinamnist.npz] [--epochs 2] [--rounds 2] [--arch resnet18] [--threads N]

Trains `bmx-compare`'s Learner (instance sampling, ResNet-18 at 28 px, bs 64, the paper's metrics) in fp32 and in bf16
with channels-last, alternating, and times each phase of every training batch with a callback: forward, loss,
backward, optimiser step, and the rest (loading the batch and the other callbacks), plus validation. It prints the
median seconds per epoch of each phase and the ratio fp32 ÷ bf16 per phase.
"""
import argparse, time, warnings
from collections import defaultdict
from pathlib import Path
warnings.filterwarnings('ignore')
import numpy as np, pandas as pd, torch
from fastai.callback.core import Callback
from fastai.torch_core import set_seed
from fastai.vision.learner import vision_learner
from fastai_bmx.app.plan.sources import load_source
from fastai_bmx.metrics import paper_metrics
from fastai_bmx.precision import precision_cbs
from fastai_bmx.app.run.training import get_arch
from fastai_bmx.medmnist import bmx_data

class PhaseTimer(Callback):
    "Seconds spent in each phase of the training batches, and in validation"
    order = -100  # first in, so its clock starts before the other callbacks' work on the batch
    def before_fit(self): self.t, self.last = defaultdict(float), None
    def _tick(self, phase):
        now = time.perf_counter(); self.t[phase] += now - self.mark; self.mark = now
    def before_batch(self):
        if not self.training: return
        now = time.perf_counter()
        if self.last is not None: self.t['load + other'] += now - self.last
        self.mark = now
    def after_pred(self):
        if self.training: self._tick('forward')
    def after_loss(self):
        if self.training: self._tick('loss')
    def after_backward(self):
        if self.training: self._tick('backward')
    def after_step(self):
        if self.training: self._tick('step')
    def after_batch(self):
        if self.training: self._tick('after batch'); self.last = time.perf_counter()
    def before_validate(self): self.v0, self.last = time.perf_counter(), None
    def after_validate(self): self.t['validation'] += time.perf_counter() - self.v0
    def before_epoch(self): self.last = None

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('--data', default='retinamnist.npz')
ap.add_argument('--epochs', type=int, default=2)
ap.add_argument('--rounds', type=int, default=2)
ap.add_argument('--arch', default='resnet18')
ap.add_argument('--threads', type=int, default=None)
args = ap.parse_args()
if args.threads: torch.set_num_threads(args.threads)
data = args.data if Path(args.data).exists() else str(bmx_data()/args.data)

rows = []
for r in range(args.rounds):
    for prec in (['fp32', 'bf16'] if r % 2 == 0 else ['bf16', 'fp32']):
        set_seed(0, reproducible=True)
        dls, rec = load_source(data, bs=64, seed=0)
        learn = vision_learner(dls, get_arch(args.arch), pretrained=False, metrics=[m.learn_metric() for m in paper_metrics(monitored=True)],
                               cbs=precision_cbs(prec))
        timer = PhaseTimer()
        t0 = time.perf_counter()
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(args.epochs, 2e-3, cbs=timer)
        total = time.perf_counter() - t0
        rows.append(dict(round=r, precision=prec, total=total, **timer.t))
        print(f"round {r} {prec}: {total:.1f} s", flush=True)

df = pd.DataFrame(rows)
phases = ['forward', 'loss', 'backward', 'step', 'after batch', 'load + other', 'validation', 'total']
med = df.groupby('precision')[phases].median() / args.epochs
table = med.T.assign(**{'fp32 ÷ bf16': med.loc['fp32'] / med.loc['bf16']})
table['fp32 share'] = med.loc['fp32'] / med.loc['fp32', 'total']
print(f"\n{args.arch} on {Path(data).name}, {args.epochs} epochs x {args.rounds} alternating rounds, {torch.get_num_threads()} threads; "
      "median seconds per epoch")
print(table.round(3).to_string())
