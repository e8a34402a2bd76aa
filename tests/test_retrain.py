"Tests of cRT (`retrain_classifier`): the body's whole state stays bit-identical, the head changes, and the traps it avoids"
import numpy as np, pytest, torch
from torch import nn
import fastcore.test as fct
from fastai.learner import load_learner
from fastai.callback.training import BnFreeze
from fastai.vision.learner import vision_learner
from fastai.callback.progress import *  # Learner.no_bar
from fastai_bmx.data import digits_dls
from fastai_bmx.mixup import BalancedMixUp
from fastai_bmx.retrain import retrain_classifier


def _learner(tmp_path, **kw):
    torch.manual_seed(0)
    dls = digits_dls(bs=32, size=32)
    return vision_learner(dls, 'resnet10t', pretrained=False, path=tmp_path, wd=0.1, **kw)


def _state(m): return {k: v.clone() for k, v in m.state_dict().items()}


def test_body_is_bit_identical_and_head_changes(tmp_path):
    "After a normal fit with Balanced-MixUp: every tensor of the body (weights, BN statistics) unchanged by cRT"
    learn = _learner(tmp_path, cbs=BalancedMixUp(0.2))
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-3)
    body, head = _state(learn.model[0]), _state(learn.model[1])
    with learn.no_bar(), learn.no_logging(): retrain_classifier(learn, epochs=2, lr=1e-3)
    after = learn.model[0].state_dict()
    assert any('running_mean' in k for k in body)  # the body has BatchNorm statistics to keep
    for k, v in body.items(): assert torch.equal(after[k], v), k
    assert not all(torch.equal(learn.model[1].state_dict()[k], v) for k, v in head.items())
    fct.test_eq(len(learn.recorder.values), 2)  # the re-training's two epochs
    assert any(isinstance(cb, BalancedMixUp) for cb in learn.cbs)  # put back for later fits
    assert not list((tmp_path/'models').glob('*.pth'))  # its checkpoint is removed once reloaded


def test_the_weight_decay_trap_is_real(tmp_path):
    "Why cRT drops stale gradients: frozen parameters that keep a zeroed gradient are shrunk by fastai's weight decay"
    learn = _learner(tmp_path)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-3)
    conv = next(m for m in learn.model[0].modules() if isinstance(m, nn.Conv2d)).weight
    before = conv.detach().clone()
    learn.train_bn, learn.opt = False, None
    learn.freeze()  # the body's gradients are zero tensors, not None
    assert conv.grad is not None and not conv.requires_grad
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2, cbs=BnFreeze())
    assert not torch.equal(conv, before)  # weight decay moved a frozen weight


def test_crt_survives_export_and_predict(tmp_path):
    learn = _learner(tmp_path)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-3)
        retrain_classifier(learn, epochs=1, lr=1e-3)
    learn.export('crt.pkl')
    new = load_learner(tmp_path/'crt.pkl')
    item = learn.dls.valid.items[0]
    with new.no_bar(), learn.no_bar():
        _, _, p_new = new.predict(item)
        _, _, p_old = learn.predict(item)
    fct.test_close(p_new, p_old, eps=1e-6)


def test_crt_needs_a_body_and_a_classifier(tmp_path):
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    ds = [(torch.randn(4), torch.tensor(i % 2)) for i in range(20)]
    from fastai.losses import CrossEntropyLossFlat
    learn = Learner(DataLoaders.from_dsets(ds, ds, bs=4), nn.Linear(4, 2), loss_func=CrossEntropyLossFlat(), path=tmp_path)
    with pytest.raises(ValueError, match='one parameter group'): retrain_classifier(learn, labels=[i % 2 for i in range(20)])
