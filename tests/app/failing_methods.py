"""Methods that go wrong on purpose, registered for the tests of a sweep that survives its runs' failures.

Imported by a `sitecustomize.py` that the tests put on PYTHONPATH, so that `bmx-compare`, run as a user runs it, knows
them too. Never imported by the library."""
from fastai.callback.core import Callback
from fastai.losses import CrossEntropyLossFlat
from fastai_bmx.app.methods import Method, register


class _NanAfter:
    "Cross-entropy that turns NaN after `n` training batches, as a custom loss with a bug would"
    def __init__(self, n:int=2): self.base, self.calls, self.n = CrossEntropyLossFlat(), 0, n
    def __call__(self, pred, targ):
        self.calls += 1
        loss = self.base(pred, targ)
        return loss * float('nan') if self.calls > self.n else loss
    def activation(self, x): return self.base.activation(x)
    def decodes(self, x): return self.base.decodes(x)


@register
class NanLoss(Method):
    "A loss that returns NaN from its third batch on: the run diverges"
    name, default = 'nanloss', False
    def loss_func(self, rec): return _NanAfter()


class _RaiseMidEpoch(Callback):
    def after_batch(self):
        if self.training and self.iter == 2: raise RuntimeError('injected failure: the image file vanished mid-epoch')


@register
class Raises(Method):
    "A run that raises an error in its first epoch, as a lost file or an out-of-memory error would"
    name, default = 'raises', False
    def cbs(self, rec): return [_RaiseMidEpoch()]
