"BalancedCutMix: the boxes' area and placement, the pasted pixels, the loss weights, the partner classes, export, and its registry entry"
import numpy as np, pytest, torch
import torch.nn.functional as F
from torch import nn
from scipy import stats
from hypothesis import given, settings, strategies as st
import fastcore.test as fct
from fastai.data.core import DataLoaders
from fastai.learner import Learner, load_learner
from fastai.losses import CrossEntropyLossFlat
from fastai.callback.core import Callback
from fastai.callback.progress import *  # Learner.no_bar
from fastai.torch_core import set_seed
from fastai_bmx.mixup import BalancedCutMix, BalancedMixUp, box_mask
from fastai_bmx.app.plan.methods import get_method, expand_methods
from fastai_bmx.app.plan.sources import load_source


@settings(max_examples=40, deadline=None)
@given(st.integers(4, 64), st.integers(4, 64), st.lists(st.floats(0, 1), min_size=1, max_size=8), st.integers(0, 1000))
def test_boxes_cover_lambda_of_the_area_and_are_never_clipped(h, w, lams, seed):
    torch.manual_seed(seed)
    lam = torch.tensor(lams)
    masks = box_mask(lam, h, w)
    fct.test_eq(masks.shape, (len(lams), 1, h, w))
    rows, cols = masks[:, 0].any(2).sum(1), masks[:, 0].any(1).sum(1)
    bh, bw = (lam.sqrt() * h).round().long(), (lam.sqrt() * w).round().long()
    empty = (bh == 0) | (bw == 0)  # a side that rounds to no pixel: no box
    fct.test_eq(rows, torch.where(empty, 0, bh))  # the full side: never cut at the border
    fct.test_eq(cols, torch.where(empty, 0, bw))
    fct.test_eq(masks.sum((1, 2, 3)), rows * cols)  # one filled rectangle
    share = masks.float().mean((1, 2, 3))
    bound = lam.sqrt() * (h + w) / 2 / (h * w) + 0.25 / (h * w)  # half a pixel off on each side, at most
    assert ((share - lam).abs() <= bound + 1e-6).all()


def test_boxes_are_placed_uniformly():
    torch.manual_seed(0)
    masks = box_mask(torch.full((6000,), 0.25), 20, 20)  # 10 x 10 boxes: 11 top rows and 11 left columns possible
    top = masks[:, 0].any(2).float().argmax(1).numpy()
    left = masks[:, 0].any(1).float().argmax(1).numpy()
    for pos in (top, left):
        fct.test_eq(set(pos), set(range(11)))
        assert stats.chisquare(np.bincount(pos, minlength=11)).pvalue > 1e-3


def image_dls(counts=(240, 60, 20, 8), bs=16, seed=0):
    set_seed(seed)
    y = torch.cat([torch.full((n,), j) for j, n in enumerate(counts)])
    x = torch.randn(len(y), 3, 12, 12)
    ds = torch.utils.data.TensorDataset(x, y)
    return DataLoaders.from_dsets(ds, torch.utils.data.TensorDataset(x[:32], y[:32]), bs=bs, device='cpu')


class Steps(Callback):
    "Record each training step: the instance batch (before the callback), then the mixed batch, the partner, the shares and the loss"
    run_valid = False
    def __init__(self, order, rows): self.order,self.rows = order,rows
    def before_batch(self):
        if self.order < 0: self.rows.append(dict(x=self.x.clone(), y=self.y.clone())); return
        cb = self.learn.balanced_cut_mix
        self.rows[-1].update(xm=self.x.clone(), x1=cb.xb1[0].clone(), y1=cb.yb1[0].clone(), share=cb.balanced_lam.clone(), lam=cb.lam.clone())
    def after_loss(self):
        if self.order > 0: self.rows[-1].update(pred=self.pred.detach().clone(), loss=self.loss.detach().clone())


def fit_logged(cb, epochs=3, **kw):
    set_seed(1)
    rows = []
    learn = Learner(image_dls(**kw), nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)),
                    loss_func=CrossEntropyLossFlat(), cbs=[Steps(-1, rows), cb, Steps(1, rows)])
    with learn.no_bar(), learn.no_logging(): learn.fit(epochs, 1e-2)
    return learn, rows


@pytest.mark.parametrize('per_sample', [False, True])
def test_partner_fills_the_box_and_the_loss_weighs_it_by_its_share(per_sample):
    learn, rows = fit_logged(BalancedCutMix(1., per_sample=per_sample))
    assert len(rows) > 30
    for r in rows:
        in_box = (r['xm'] == r['x1']) & (r['xm'] != r['x'])  # random floats: equal only where pasted
        outside = r['xm'] == r['x']
        assert (in_box | outside).all()  # every pixel is the instance one or the partner one
        other = ~(r['x'] == r['x1']).flatten(1).all(1)  # the partner is another item (with replacement, it may be the same)
        share = in_box[other, 0].float().mean((1, 2))
        fct.test_close(share, r['share'][other] if per_sample else r['share'].expand_as(share))  # one box for the batch unless per_sample
        fct.test_eq(in_box, in_box[:, :1].expand_as(in_box))  # the same box in every channel
        ce = lambda y: F.cross_entropy(r['pred'], y, reduction='none')
        fct.test_close(r['loss'], ((1 - r['share']) * ce(r['y']) + r['share'] * ce(r['y1'])).mean(), eps=1e-5)
        fct.test_close(r['lam'], 1 - r['share'])
    shares = torch.cat([r['share'].reshape(-1) for r in rows])
    fct.test_close(shares.mean(), 0.5, eps=0.08)  # E[λ] = α/(1+α) for α = 1


def test_partner_classes_are_uniform_and_instance_ones_follow_the_data():
    learn, rows = fit_logged(BalancedCutMix(0.2), epochs=8)
    y_part = torch.cat([r['y1'] for r in rows]).numpy()
    y_inst = torch.cat([r['y'] for r in rows]).numpy()
    assert len(y_part) > 2000
    assert stats.chisquare(np.bincount(y_part, minlength=4)).pvalue > 1e-3
    assert stats.chisquare(np.bincount(y_inst, minlength=4)).pvalue < 1e-12


def test_validation_is_never_cut_and_stop_ends_the_cutting():
    learn, rows = fit_logged(BalancedCutMix(1., stop=0.5), epochs=2)
    n = len(rows) // 2
    assert all(not torch.equal(r['xm'], r['x']) for r in rows[:n] if r['share'] > 0)
    assert all(torch.equal(r['xm'], r['x']) for r in rows[n:])
    xb, yb = learn.dls.valid.one_batch()
    with learn.no_bar(): preds, _ = learn.get_preds(dl=[(xb, yb)])
    learn.model.eval()
    with torch.no_grad(): fct.test_close(preds, F.softmax(learn.model(xb), -1), eps=1e-6)


def test_refuses_inputs_that_are_not_images():
    learn = Learner(DataLoaders.from_dsets(torch.utils.data.TensorDataset(torch.randn(64, 5), torch.arange(64) % 2),
                                           torch.utils.data.TensorDataset(torch.randn(8, 5), torch.arange(8) % 2), bs=8, device='cpu'),
                    nn.Linear(5, 2), loss_func=CrossEntropyLossFlat(), cbs=BalancedCutMix(1.))
    with pytest.raises(TypeError, match='needs image batches'):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    with pytest.raises(ValueError, match='finite number > 0'): BalancedCutMix(0)


def test_survives_export_load_learner_and_predict(tmp_path):
    "Trained on the long-tailed digits with BalancedCutMix, exported and loaded back: `predict` is the model's plain softmax"
    from fastai_bmx.data import digits_dls
    dls = digits_dls(bs=32, size=8, batch_tfms=[])
    torch.manual_seed(0)
    learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(3*8*8, 10)), loss_func=CrossEntropyLossFlat(), path=tmp_path,
                    cbs=BalancedCutMix(1.))
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2)
    learn.export('m.pkl')
    new = load_learner(tmp_path/'m.pkl')
    assert isinstance(new.balanced_cut_mix, BalancedCutMix) and new.balanced_cut_mix.partner_dl is None
    with new.no_bar(): _, _, probs = new.predict(dls.valid.items[0])
    xb, _ = dls.valid.one_batch()
    learn.model.eval()
    with torch.no_grad(): fct.test_close(probs, F.softmax(learn.model(xb[:1]), -1)[0], eps=1e-5)


def test_registry_entry():
    dls, rec = load_source('digits', bs=16)
    (cb,) = get_method('bcutmix-1').cbs(rec)
    assert type(cb) is BalancedCutMix and cb.alpha == 1.
    fct.test_eq(expand_methods(['bcutmix'], alphas=[0.5]), ['bcutmix-0.5'])
    fct.test_eq(expand_methods(['bcutmix+la']), ['bcutmix-0.2+la-1', 'bcutmix-1+la-1'])
    assert 'bcutmix-0.2' not in expand_methods()  # not in the paper's default set
    with pytest.raises(ValueError, match='both mix the training batch'): get_method('bmx-0.2+bcutmix-1')
    with pytest.raises(ValueError, match='alpha'): get_method('bcutmix-0')
