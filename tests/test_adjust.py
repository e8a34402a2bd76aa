"Tests of logit adjustment (loss and post hoc), deferred re-weighting, and their registry entries"
import numpy as np, pytest, torch
import torch.nn.functional as F
from torch import nn
from hypothesis import given, settings, strategies as st
import fastcore.test as fct
from fastai.data.core import DataLoaders
from fastai.learner import Learner, load_learner
from fastai.losses import CrossEntropyLossFlat
from fastai.callback.core import Callback
from fastai.callback.progress import *  # Learner.no_bar
from fastai_bmx.adjust import LogitAdjustedLoss, posthoc_adjust, tune_tau, log_prior
from fastai_bmx.losses import DeferredReweight, cb_weights
from fastai_bmx.metrics import balanced_accuracy
from fastai_bmx.mixup import BalancedMixUp
from fastai_bmx.app.plan.methods import get_method, expand_methods
from fastai_bmx.app.plan.sources import load_source


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 500), min_size=2, max_size=6), st.floats(0, 3), st.integers(0, 1000))
def test_la_loss_is_cross_entropy_of_the_shifted_logits(counts, tau, seed):
    g = torch.Generator().manual_seed(seed)
    z, y = torch.randn(12, len(counts), generator=g), torch.randint(0, len(counts), (12,), generator=g)
    n = torch.tensor(counts, dtype=torch.float32)
    fct.test_close(LogitAdjustedLoss(counts, tau)(z, y), F.cross_entropy(z + tau * torch.log(n / n.sum()), y), eps=1e-5)
    fct.test_close(LogitAdjustedLoss(counts, 0.)(z, y), F.cross_entropy(z, y), eps=1e-6)


def test_la_loss_refuses_an_empty_class_and_predicts_with_raw_logits():
    with pytest.raises(ValueError, match=r'Classes \[2\] have no training items'): LogitAdjustedLoss([4, 3, 0])
    z = torch.randn(5, 3)
    la = LogitAdjustedLoss([100, 10, 1])
    fct.test_eq(la.activation(z), F.softmax(z, -1))
    fct.test_eq(la.decodes(z), z.argmax(-1))
    assert la.y_int


def test_posthoc_adjust_and_tune_tau():
    p = torch.softmax(torch.randn(30, 3), 1)
    fct.test_close(posthoc_adjust(p, [7, 7, 7], 1.), p, eps=1e-6)  # uniform prior: identity
    counts = np.array([300, 60, 12])
    t = np.repeat([0, 1, 2], 50)
    rng = np.random.default_rng(1)
    lik = np.exp(1.5 * np.eye(3)[t] + rng.normal(size=(len(t), 3)))
    biased = lik * counts / counts.sum()
    biased /= biased.sum(1, keepdims=True)
    best, scores = tune_tau(biased, t, counts, balanced_accuracy, taus=(0., 1., 3.))
    fct.test_eq(best, 1.)
    assert scores[1.] > scores[0.] and scores[1.] > scores[3.]
    with pytest.raises(ValueError, match='one column per class'): posthoc_adjust(p, [1, 2])


def _toy(n=100, bs=10):
    torch.manual_seed(0)
    ys = torch.tensor([int(i % 10 == 0) for i in range(n)])
    ds = list(zip(torch.randn(n, 4) + ys[:, None].float(), ys))
    return DataLoaders.from_dsets(ds, ds[:20], bs=bs, device='cpu'), ys


def test_drw_switches_the_weights_at_the_right_step():
    dls, _ = _toy()
    seen = []
    class Spy(Callback):
        def after_loss(self):
            if self.training: seen.append(self.learn.loss_func.func.weight)
    learn = Learner(dls, nn.Linear(4, 2), loss_func=CrossEntropyLossFlat(), cbs=[DeferredReweight(start=0.6, class_counts=[90, 10]), Spy()])
    with learn.no_bar(), learn.no_logging(): learn.fit(5, 1e-2)
    on = [w is not None for w in seen]
    fct.test_eq(on, [False] * 30 + [True] * 20)  # 50 batches, pct_train reaches 0.6 at batch 30
    fct.test_close(seen[-1], torch.tensor(cb_weights([90, 10], 0.9999), dtype=torch.float32))
    assert learn.loss_func.func.weight is None  # restored after the fit
    with pytest.raises(TypeError, match='loss with class weights'):
        Learner(dls, nn.Linear(4, 2), loss_func=LogitAdjustedLoss([90, 10]), cbs=DeferredReweight()).fit(1)


@pytest.mark.parametrize('make', [
    lambda ys: dict(loss_func=LogitAdjustedLoss(np.bincount(ys))),
    lambda ys: dict(loss_func=LogitAdjustedLoss(np.bincount(ys)), cbs=BalancedMixUp(0.2)),
    lambda ys: dict(loss_func=CrossEntropyLossFlat(), cbs=DeferredReweight(0.5)),
    lambda ys: dict(loss_func=CrossEntropyLossFlat(), cbs=BalancedMixUp(0.2, stop=0.5)),
], ids=['la', 'la+bmx', 'drw', 'bmx-stop'])
def test_new_pieces_survive_export_and_load_learner(tmp_path, make):
    "Trained on the long-tailed digits, exported, loaded back: `predict` gives the raw model's softmax, unshifted and unmixed"
    from fastai_bmx.data import digits_dls
    from fastai_bmx.sampling import get_labels
    dls = digits_dls(bs=32, size=8, batch_tfms=[])
    torch.manual_seed(0)
    learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(3*8*8, 10)), path=tmp_path, **make(get_labels(dls.train)))
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2)
    learn.export('m.pkl')
    new = load_learner(tmp_path/'m.pkl')
    item = dls.valid.items[0]
    with new.no_bar(): _, _, probs = new.predict(item)
    xb, _ = dls.valid.one_batch()
    learn.model.eval()
    with torch.no_grad(): ref = F.softmax(learn.model(xb[:1]), -1)[0]
    fct.test_close(probs, ref, eps=1e-5)


def test_registry_entries_and_combinations():
    dls, rec = load_source('digits', bs=16)
    la = get_method('la').loss_func(rec)
    assert isinstance(la, LogitAdjustedLoss) and la.tau == 1.
    (drw,) = get_method('drw').cbs(rec)
    assert isinstance(drw, DeferredReweight) and drw.start == 0.8
    combo = get_method('bmx-0.2+la-2')
    assert isinstance(combo.loss_func(rec), LogitAdjustedLoss) and combo.loss_func(rec).tau == 2.
    assert [type(c).__name__ for c in combo.cbs(rec)] == ['BalancedMixUp']
    fct.test_eq(expand_methods(['bmx-0.2+la', 'sqrt+drw']), ['bmx-0.2+la-1', 'sqrt+drw'])
    with pytest.raises(ValueError, match='both change'): get_method('cb+la')
    from fastai_bmx.app.plan.methods import METHODS
    with pytest.raises(ValueError, match='tau=-1'): METHODS['la'](-1.)
