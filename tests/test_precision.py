"Mixed precision on the device at hand: bf16 really computes in bf16 on a CPU, fp16 is refused there, and a run trains with it"
import numpy as np, pytest, torch
from torch import nn
import fastcore.test as fct
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.progress import *  # Learner.no_bar
from fastai_bmx.precision import precision_cbs, check_precision, DeviceMixedPrecision
from fastai_bmx.mixup import BalancedMixUp, BalancedCutMix
from fastai_bmx.app.plan.sources import load_source
from fastai_bmx.app.run.training import train_eval


class Dtypes(Callback):
    "The dtypes of the first layer's output, of the inputs after mixing, and of the predictions the loss gets"
    order = 50
    def before_fit(self):
        self.conv_t, self.x_t, self.pred_t = set(), set(), set()
        self.hook = self.learn.model[0].register_forward_hook(lambda m, i, o: self.conv_t.add(o.dtype) if self.training else None)
    def before_batch(self):
        if self.training: self.x_t.add(self.learn.xb[0].dtype)
    def after_loss(self):
        if self.training: self.pred_t.add(self.learn.pred.dtype)
    def after_fit(self): self.hook.remove()


def fit_tiny(*cbs, device='cpu'):
    torch.manual_seed(0)
    x, y = torch.randn(192, 3, 12, 12), torch.cat([torch.zeros(150), torch.ones(30), torch.full((12,), 2.)]).long()
    ds = torch.utils.data.TensorDataset(x, y)
    dls = DataLoaders.from_dsets(ds, ds, bs=32, device=device)
    learn = Learner(dls, nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)),
                    loss_func=CrossEntropyLossFlat(), cbs=[Dtypes(), *cbs])
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2)
    return learn


@pytest.mark.parametrize('mix', [None, BalancedMixUp, BalancedCutMix], ids=['plain', 'bmx', 'bcutmix'])
def test_bf16_computes_in_bf16_on_a_cpu(mix):
    learn = fit_tiny(*precision_cbs('bf16'), *([mix(0.5)] if mix else []))
    d = learn.dtypes
    fct.test_eq((d.conv_t, d.x_t, d.pred_t), ({torch.bfloat16}, {torch.float32}, {torch.float32}))  # blended in fp32, computed in bf16
    assert all(np.isfinite(v) for row in learn.recorder.values for v in row)
    assert learn.model[0].weight.dtype == torch.float32  # fp32 master weights
    assert learn.model[0].weight.is_contiguous(memory_format=torch.channels_last)  # fastai's ChannelsLast came along


def test_fastai_mixed_precision_alone_stays_fp32_on_a_cpu():
    "The trap that `DeviceMixedPrecision` fixes: fastai's callback opens a CUDA autocast, which does nothing on a CPU"
    with pytest.warns(UserWarning, match='CUDA is not available'):
        learn = fit_tiny(MixedPrecision('bf16'))
    fct.test_eq(learn.dtypes.conv_t, {torch.float32})


def test_checks():
    fct.test_eq(precision_cbs('fp32'), [])
    fct.test_eq([type(c).__name__ for c in precision_cbs('bf16')], ['ChannelsLast', 'DeviceMixedPrecision'])
    fct.test_eq([type(c).__name__ for c in precision_cbs('bf16', channels_last=False)], ['DeviceMixedPrecision'])
    with pytest.raises(ValueError, match='use one of'): check_precision('fp64')
    with pytest.raises(ValueError, match="needs a CUDA GPU"): check_precision('fp16', 'cpu')


def test_a_bf16_run_trains_and_scores():
    dls, rec = load_source('digits', bs=32, seed=0)
    row, preds = train_eval(dls, rec, 'bmx-0.2', arch='resnet10t', epochs=1, show_bar=False, precision='bf16')
    assert np.isfinite(row['mcc']) and preds['probs'].dtype == torch.float32
    fct.test_close(preds['probs'].sum(1), torch.ones(len(preds['probs'])), eps=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('precision', ['fp16', 'bf16'])
def test_cuda_mixed_precision(precision):
    learn = fit_tiny(*precision_cbs(precision), BalancedMixUp(0.5), device='cuda')
    fct.test_eq(learn.dtypes.conv_t, {torch.float16 if precision == 'fp16' else torch.bfloat16})
    assert all(np.isfinite(v) for row in learn.recorder.values for v in row)
