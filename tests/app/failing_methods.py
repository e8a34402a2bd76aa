"""Methods that go wrong on purpose, registered for the tests of a sweep that survives its runs' failures.

Imported by a `sitecustomize.py` that the tests put on PYTHONPATH, so that `bmx-compare`, run as a user runs it, knows
them too, and by the setup hook of the Ray workers of tests/app/test_ray.py. Never imported by the library."""
import os, signal
from pathlib import Path
from fastai.callback.core import Callback
from fastai.losses import CrossEntropyLossFlat
from fastai_bmx.app.plan.methods import Method, register


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


class _CountTries(Callback):
    "Append this process's pid to OUT/tries/METHOD as training starts: how often a run was tried, and by which process"
    def __init__(self, method:str): self.method = method
    def before_train(self):
        if self.epoch: return  # once per try, not per epoch (and not for the predictions, which start no training)
        d = Path(self.learn.path)/'tries'; d.mkdir(exist_ok=True)
        with open(d/self.method, 'a') as f: f.write(f'{os.getpid()}\n')


class _KillMidEpoch(Callback):
    "SIGKILL this process at the third training batch, as the kernel's OOM killer or a lost node would; `once`: on the first try only"
    def __init__(self, once:bool): self.once = once
    def after_batch(self):
        if not (self.training and self.iter == 2): return
        mark = Path(self.learn.path)/'tries'/'.killed'
        if self.once and mark.exists(): return
        mark.touch(); os.kill(os.getpid(), signal.SIGKILL)


@register
class NanCounted(Method):
    "`nanloss`, counting its tries: the run diverges"
    name, default = 'nancounted', False
    def loss_func(self, rec): return _NanAfter()
    def cbs(self, rec): return [_CountTries(self.name)]


@register
class KilledOnce(Method):
    "A run whose process is killed (SIGKILL) in its first try, and that trains in the next"
    name, default = 'killedonce', False
    def cbs(self, rec): return [_CountTries(self.name), _KillMidEpoch(once=True)]


@register
class Killed(Method):
    "A run whose process is killed (SIGKILL) in every try"
    name, default = 'killed', False
    def cbs(self, rec): return [_CountTries(self.name), _KillMidEpoch(once=False)]


class _RecordLine(Callback):
    "Append a line about this run, `line(learn)`, to OUT/`fname` as its training starts"
    def __init__(self, fname:str, line): self.fname, self.line = fname, line
    def before_train(self):
        if self.epoch: return
        with open(Path(self.learn.path)/self.fname, 'a') as f: f.write(self.line(self.learn) + '\n')


def _devices(learn) -> str:
    "The GPUs Ray gave this process (CUDA_VISIBLE_DEVICES) and the model's device"
    return f"{os.environ.get('CUDA_VISIBLE_DEVICES')} {next(learn.model.parameters()).device.type}"


def _share(learn) -> str:
    "The torch threads and the training loader's processes of this run"
    import torch
    return f"{torch.get_num_threads()} {learn.dls.train.num_workers}"


@register
class SeesDevices(Method):
    "Instance sampling, recording which GPUs its run was given and where its model trained (OUT/devices)"
    name, default = 'seesdevices', False
    def cbs(self, rec): return [_RecordLine('devices', _devices)]


@register
class SeesShare(Method):
    "Instance sampling, recording its torch threads and loader processes: a worker's share of its node (OUT/share)"
    name, default = 'seesshare', False
    def cbs(self, rec): return [_RecordLine('share', _share)]


def ray_worker_setup():
    "The `worker_process_setup_hook` of the tests' Ray workers: importing this module registered the methods above"
