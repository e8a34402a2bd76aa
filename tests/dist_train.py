"""Run by tests/test_distributed.py under torchrun (2 CPU processes, gloo): Balanced-MixUp under fastai's `distrib_ctx`.

Each rank writes what it trained on to OUT/rank{r}.json: the index of every item of its main and partner batches,
the partner labels, its final weights and its loss function after the fit."""
import json, os, sys
import torch
from torch import nn
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import set_seed
from fastai.distributed import *  # Learner.distrib_ctx (needs accelerate)
from fastai_bmx.mixup import BalancedMixUp

COUNTS, BS, EPOCHS = (200, 80, 24, 8), 16, 2

class Model(nn.Module):
    "A linear classifier that ignores column 0 (the item's index, kept there to trace which items were used)"
    def __init__(self): super().__init__(); self.lin = nn.Linear(2, len(COUNTS))
    def forward(self, x): return self.lin(x[:, 1:])

class Trace(Callback):
    "Records the index of every main item (before mixing) and partner item of each training batch"
    order = BalancedMixUp.order - 1
    def before_fit(self): self.main, self.partner, self.partner_y = [], [], []
    def before_batch(self):
        if self.training: self.main.append(self.x[:, 0].long().tolist())
    def after_loss(self):
        if not self.training: return
        bmx = self.learn.balanced_mix_up
        self.partner.append(bmx.xb1[0][:, 0].long().tolist())
        self.partner_y.append(bmx.yb1[0].tolist())

if __name__ == '__main__':
    out, rank = sys.argv[1], int(os.environ['RANK'])
    torch.set_num_threads(1)
    set_seed(0)  # the same seed on every rank, as users do: per-rank partner draws would then repeat each other
    y = torch.cat([torch.full((n,), j) for j, n in enumerate(COUNTS)])
    x = torch.cat([torch.arange(len(y)).float()[:, None], torch.randn(len(y), 2) + y[:, None]], 1)
    ds = torch.utils.data.TensorDataset(x, y)
    dls = DataLoaders.from_dsets(ds, ds, bs=BS, device='cpu')
    trace = Trace()
    learn = Learner(dls, Model(), loss_func=CrossEntropyLossFlat(), cbs=[BalancedMixUp(0.2), trace])
    learn.remove_cb(ProgressCallback)
    with learn.distrib_ctx(cpu=True), learn.no_logging(): learn.fit(EPOCHS, 1e-2)  # cpu=True: Accelerate picks gloo
    params = torch.cat([p.detach().flatten() for p in learn.model.parameters()]).tolist()
    json.dump(dict(main=trace.main, partner=trace.partner, partner_y=trace.partner_y, params=params,
                   loss_func=type(learn.loss_func).__name__, steps_per_epoch=len(trace.main) // EPOCHS),
              open(os.path.join(out, f'rank{rank}.json'), 'w'))
