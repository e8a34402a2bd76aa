"Tests of fastai_bmx.losses against hand-written numpy formulas and PyTorch's cross-entropy"
import pickle, warnings
import numpy as np, pandas as pd, pytest, torch
import torch.nn.functional as F
from torch import nn
import fastcore.test as fct
from hypothesis import given, settings, strategies as st
from fastai.losses import FocalLossFlat
from fastai.layers import NoneReduce
from fastai.callback.mixup import reduce_loss, MixUp
from fastai.data.core import Datasets, DataLoaders
from fastai.data.transforms import Categorize, IndexSplitter, ItemGetter
from fastai.learner import Learner
from fastai_bmx.losses import (WeightedFocalLoss, WeightedFocalLossFlat, ClassBalancedLoss, cb_weights, class_counts,
                               check_beta, check_counts)
from fastai_bmx.sampling import get_labels


def softmax_np(x):
    x = np.asarray(x, dtype=np.float64)
    p = np.exp(x - x.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)

def focal_np(x, y, gamma, w=None):
    "Per-item -w_y (1-p_t)^gamma log p_t in float64"
    pt = softmax_np(x)[np.arange(len(y)), np.asarray(y)]
    w = np.ones(np.shape(x)[1]) if w is None else np.asarray(w, dtype=np.float64)
    return -w[np.asarray(y)] * (1 - pt)**gamma * np.log(pt)

def cb_np(counts, beta):
    "Cui et al. weights, term by term, with pure python floats"
    e = [(1 - beta**n) / (1 - beta) for n in counts]
    inv = [1/v for v in e]
    return np.array([v * len(counts) / sum(inv) for v in inv])

def _batch(n=48, c=5, seed=0, scale=3.):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g)*scale, torch.randint(0, c, (n,), generator=g)


# ---------------------------------------------------------------- focal loss
@settings(max_examples=60, deadline=None)
@given(c=st.integers(2, 6), n=st.integers(1, 30), gamma=st.floats(0, 5), seed=st.integers(0, 10**6),
       weighted=st.booleans())
def test_focal_matches_formula(c, n, gamma, seed, weighted):
    x, y = _batch(n, c, seed)
    w = torch.rand(c, generator=torch.Generator().manual_seed(seed+1))*4 + .05 if weighted else None
    per = WeightedFocalLossFlat(gamma=gamma, weight=w, reduction='none')(x, y)
    fct.test_close(per, focal_np(x, y, gamma, w), eps=1e-4)
    fct.test_close(WeightedFocalLossFlat(gamma=gamma, weight=w)(x, y), focal_np(x, y, gamma, w).mean(), eps=1e-4)
    fct.test_close(WeightedFocalLossFlat(gamma=gamma, weight=w, reduction='sum')(x, y), focal_np(x, y, gamma, w).sum(), eps=1e-3)

def test_fastai_focal_equal_without_weights():
    x, y = _batch()
    for g in (0., 1., 2.):
        fct.test_close(WeightedFocalLossFlat(gamma=g)(x, y), FocalLossFlat(gamma=g)(x, y), eps=1e-6)
        fct.test_close(WeightedFocalLossFlat(gamma=g, weight=torch.ones(5))(x, y), FocalLossFlat(gamma=g, weight=torch.ones(5))(x, y), eps=1e-6)

def test_fastai_focal_wrong_with_weights():
    "fastai takes p_t from the weighted CE: it differs from the formula, ours matches it"
    x, y = _batch()
    w = torch.tensor([.2, .5, 1., 2., 5.])
    truth = focal_np(x, y, 2., w)
    fastai_per = FocalLossFlat(gamma=2., weight=w, reduction='none')(x, y).numpy()
    ours_per = WeightedFocalLossFlat(gamma=2., weight=w, reduction='none')(x, y).numpy()
    fct.test_close(ours_per, truth, eps=1e-5)
    assert np.abs(fastai_per - truth).max() > 0.1
    # fastai's own number is exactly the "p_t from weighted CE" formula
    ce = focal_np(x, y, 0.)
    wy = w.numpy()[y.numpy()]
    fct.test_close(fastai_per, (1 - np.exp(-wy*ce))**2 * wy*ce, eps=1e-5)
    # items of weight 1 agree, others don't
    one = wy == 1.
    fct.test_close(fastai_per[one], truth[one], eps=1e-5)

def test_gamma0_is_cross_entropy():
    x, y = _batch()
    w = torch.tensor([.2, .5, 1., 2., 5.])
    fct.test_close(WeightedFocalLossFlat(gamma=0.)(x, y), F.cross_entropy(x, y), eps=1e-6)
    fct.test_close(WeightedFocalLossFlat(gamma=0., weight=w, reduction='none')(x, y), F.cross_entropy(x, y, weight=w, reduction='none'), eps=1e-6)
    fct.test_close(WeightedFocalLossFlat(gamma=0., weight=w, reduction='sum')(x, y), F.cross_entropy(x, y, weight=w, reduction='sum'), eps=1e-4)
    # 'mean' is the plain mean over items, not PyTorch's sum(w_y l)/sum(w_y)
    fct.test_close(WeightedFocalLossFlat(gamma=0., weight=w)(x, y), F.cross_entropy(x, y, weight=w, reduction='sum')/len(y), eps=1e-5)

def test_axis_and_flatten():
    "Class axis 1 of an (N, C, H, W) output, like segmentation: same as the formula per pixel"
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 4, 3, 3, generator=g), torch.randint(0, 4, (2, 3, 3), generator=g)
    w = torch.tensor([1., 2., .5, 3.])
    got = WeightedFocalLossFlat(gamma=2., weight=w, axis=1)(x, y)
    xf, yf = x.permute(0, 2, 3, 1).reshape(-1, 4), y.reshape(-1)
    fct.test_close(got, focal_np(xf, yf, 2., w).mean(), eps=1e-5)
    fct.test_eq(WeightedFocalLossFlat(axis=1).decodes(x), x.argmax(1))
    fct.test_close(WeightedFocalLossFlat(axis=1).activation(x).sum(1), torch.ones(2, 3, 3))

def test_gradients_finite_extreme_logits():
    for g in (0., .5, 2.):
        x = torch.tensor([[100., -100, 0], [0, 50, -50], [-30, 30, 0]], requires_grad=True)
        loss = WeightedFocalLossFlat(gamma=g, weight=[1., 2., 3.])(x, torch.tensor([0, 1, 0]))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()

def test_focal_bad_input():
    x, y = _batch()
    fct.test_fail(lambda: WeightedFocalLossFlat(gamma=-1.), contains='not a finite number >= 0')
    fct.test_fail(lambda: WeightedFocalLossFlat(gamma=float('nan')), contains='not a finite number >= 0')
    fct.test_fail(lambda: WeightedFocalLossFlat(weight=[1., -2.]), contains='finite and >= 0')
    fct.test_fail(lambda: WeightedFocalLossFlat(weight=[[1., 2.]]), contains='one number per class')
    fct.test_fail(lambda: WeightedFocalLossFlat(weight=[1., 2.])(x, y), contains='2 class weights but the model outputs 5')
    fct.test_fail(lambda: WeightedFocalLoss(reduction='avg')(x, y), contains="not one of 'mean', 'sum', 'none'")

def test_pickle_and_device():
    lf = ClassBalancedLoss([50, 5, 1], beta=.99, gamma=2.)
    lf2 = pickle.loads(pickle.dumps(lf))
    x, y = _batch(c=3)
    fct.test_close(lf2(x, y), lf(x, y))
    lf.to(torch.device('cpu'))
    fct.test_eq(lf.weight.device.type, 'cpu')


# ---------------------------------------------------------------- class-balanced weights
@settings(max_examples=80, deadline=None)
@given(counts=st.lists(st.integers(1, 5000), min_size=1, max_size=8), beta=st.floats(0, 0.9999))
def test_cb_weights_formula(counts, beta):
    w = cb_weights(counts, beta)
    fct.test_close(w, cb_np(counts, beta), eps=1e-6)
    fct.test_close(w.sum(), len(counts), eps=1e-9)
    # rarer classes never get a smaller weight
    order = np.argsort(counts, kind='stable')
    assert (np.diff(w[order]) <= 1e-9).all()

def test_cb_weights_limits():
    counts = [486, 128, 206, 194, 66]
    fct.test_close(cb_weights(counts, 0.), np.ones(5))
    inv = 1/np.array(counts); inv = inv*5/inv.sum()
    fct.test_close(cb_weights(counts, 1 - 1e-9), inv, eps=1e-4)
    fct.test_close(cb_weights([7, 7, 7], .999), np.ones(3))
    fct.test_close(cb_weights(np.array([3, 1], dtype=np.uint8), .5), cb_np([3, 1], .5))
    fct.test_close(cb_weights(torch.tensor([3, 1]), .5), cb_np([3, 1], .5))
    fct.test_close(cb_weights([3., 1.], .5), cb_np([3, 1], .5))

def test_cb_weights_zero_count_treated_as_one():
    with pytest.warns(UserWarning, match=r'Classes \[0, 2\] have no training items'):
        w = cb_weights([0, 10, 0, 4], .9)
    fct.test_close(w, cb_np([1, 10, 1, 4], .9))
    assert np.isfinite(w).all()

def test_cb_bad_input():
    fct.test_fail(lambda: cb_weights([1, 2], 1.), contains='not a number in [0, 1)')
    fct.test_fail(lambda: cb_weights([1, 2], -0.1), contains='not a number in [0, 1)')
    fct.test_fail(lambda: cb_weights([1, 2], float('nan')), contains='not a number in [0, 1)')
    fct.test_fail(lambda: cb_weights([1, 2], True), contains='not a number in [0, 1)')
    fct.test_fail(lambda: cb_weights([3, -1]), contains="can't be negative")
    fct.test_fail(lambda: cb_weights([0, 0]), contains='no items')
    fct.test_fail(lambda: cb_weights([]), contains='one count per class')
    fct.test_fail(lambda: cb_weights([[1, 2], [3, 4]]), contains='one count per class')
    fct.test_fail(lambda: cb_weights([1.5, 2]), contains='whole numbers')
    fct.test_fail(lambda: cb_weights(['a', 'b']), contains='must be numbers')
    fct.test_eq(check_beta(0), 0.)
    fct.test_eq(check_counts([1, 2]).dtype, np.float64)


# ---------------------------------------------------------------- class-balanced loss
@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(1, 1000), min_size=2, max_size=6), beta=st.sampled_from([0., .9, .99, .999, .9999]),
       gamma=st.sampled_from([0., .5, 1., 2.]), seed=st.integers(0, 1000))
def test_cb_loss_matches_formula(counts, beta, gamma, seed):
    x, y = _batch(32, len(counts), seed)
    w = cb_np(counts, beta)
    fct.test_close(ClassBalancedLoss(counts, beta, gamma)(x, y), focal_np(x, y, gamma, w).mean(), eps=1e-4)
    fct.test_close(ClassBalancedLoss(counts, beta, gamma, reduction='none')(x, y), focal_np(x, y, gamma, w), eps=1e-4)

def test_cb_loss_equivalences():
    x, y = _batch()
    counts = [40, 10, 5, 3, 2]
    fct.test_close(ClassBalancedLoss(counts, beta=0.)(x, y), F.cross_entropy(x, y), eps=1e-6)
    w = torch.tensor(cb_np(counts, .99), dtype=torch.float32)
    fct.test_close(ClassBalancedLoss(counts, beta=.99, reduction='none')(x, y), F.cross_entropy(x, y, weight=w, reduction='none'), eps=1e-5)
    fct.test_close(ClassBalancedLoss(counts, beta=0., gamma=2.)(x, y), FocalLossFlat(gamma=2.)(x, y), eps=1e-6)
    lf = ClassBalancedLoss(counts, beta=.99, gamma=2.)
    assert lf.y_int and lf.gamma == 2. and lf.beta == .99
    fct.test_eq(lf.class_counts, counts)
    assert 'beta=0.99' in repr(lf) and 'gamma=2.0' in repr(lf)
    fct.test_fail(lambda: ClassBalancedLoss(counts, beta=1.), contains='not a number in [0, 1)')
    fct.test_fail(lambda: ClassBalancedLoss([1, -1]), contains="can't be negative")

def test_none_reduce_and_mixup_mean():
    "fastai's MixUp path: NoneReduce -> per-item losses -> lerp -> reduce_loss == lerp of the 'mean' losses"
    x, y = _batch()
    y2 = torch.roll(y, 1)
    lf = ClassBalancedLoss([40, 10, 5, 3, 2], beta=.99, gamma=2.)
    with NoneReduce(lf) as lfn:
        a, b = lfn(x, y2), lfn(x, y)
        fct.test_eq(a.shape, (len(y),))
        loss = torch.lerp(a, b, .3)
    fct.test_eq(lf.reduction, 'mean')  # restored on exit
    mixed = reduce_loss(loss, lf.reduction)
    fct.test_close(mixed, .7*lf(x, y2) + .3*lf(x, y), eps=1e-5)
    fct.test_close(mixed, (.7*focal_np(x, y2, 2., lf.weight) + .3*focal_np(x, y, 2., lf.weight)).mean(), eps=1e-5)


# ---------------------------------------------------------------- class counts from labels
def _dls():
    df = pd.DataFrame({'x': np.arange(12.), 'y': list('aaaaaaabbcbc')})
    dsets = Datasets(df, [[ItemGetter('x')], [ItemGetter('y'), Categorize()]], splits=IndexSplitter([10, 11])(df))
    return dsets.dataloaders(bs=4)

def test_class_counts_and_from_dl():
    dls = _dls()
    counts = np.bincount(get_labels(dls.train), minlength=dls.c)
    fct.test_eq(class_counts(dls.train), counts)
    fct.test_eq(counts, [7, 2, 1])
    fct.test_eq(class_counts(dls.valid), [0, 1, 1])  # minlength from the vocab
    lf = ClassBalancedLoss.from_dl(dls.train, beta=.9, gamma=1.)
    fct.test_close(lf.weight, cb_np([7, 2, 1], .9))
    assert lf.gamma == 1.
    fct.test_eq(class_counts(np.array([[2], [0], [2]], dtype=np.uint8), n_classes=4), [1, 0, 2, 0])
    fct.test_fail(lambda: class_counts([0, 5], n_classes=3), contains='beyond the vocabulary of 3 classes')

def test_train_with_mixup():
    "Two epochs with fastai's MixUp on a tiny TensorDataset: loss switched and restored, finite values"
    torch.manual_seed(1)
    y = torch.cat([torch.zeros(60), torch.ones(15), torch.full((5,), 2)]).long()
    x = torch.randn(80, 4) + y[:, None].float()
    ds = torch.utils.data.TensorDataset(x, y)
    dls = DataLoaders.from_dsets(ds, ds, bs=16, shuffle=True)
    lf = ClassBalancedLoss.from_dl(dls.train, beta=.99, gamma=1., n_classes=3)
    fct.test_eq(lf.class_counts, [60, 15, 5])
    learn = Learner(dls, nn.Linear(4, 3), loss_func=lf, cbs=MixUp(.4))
    with learn.no_logging(): learn.fit(2, 1e-2)
    fct.test_eq(learn.loss_func.reduction, 'mean')
    assert np.isfinite(np.array(learn.recorder.values, dtype=float)).all()
    assert np.isfinite(learn.recorder.losses).all()
