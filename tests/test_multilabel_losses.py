"Tests of fastai_bmx.multilabel_losses against their papers' formulas, written as loops, and the reference codes"
import math, pickle, warnings
import numpy as np, pytest, torch
import torch.nn.functional as F
from torch import nn
import fastcore.test as fct
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import BCEWithLogitsLossFlat
from fastai.callback.mixup import MixUp
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.torch_core import set_seed
from fastai_bmx.mixup import BalancedMixUp
from fastai_bmx.multilabel_losses import (MultiLabelLoss, pos_weights, WeightedBCELoss, FocalBCELoss, AsymmetricLoss,
                                          DistributionBalancedLoss)

COUNTS, N = np.array([700., 200., 60., 12., 3.]), 1000  # positives of five findings among N training images


def batch(seed=0, bs=24, soft=False):
    "Logits and targets (bs, 5) in float64: hard multi-hot, or soft as Balanced-MixUp makes them"
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(bs, 5, generator=g, dtype=torch.float64)*3
    y = (torch.rand(bs, 5, generator=g, dtype=torch.float64) < torch.tensor(COUNTS/N*3).clamp(max=.7)).double()
    if soft:
        y2 = (torch.rand(bs, 5, generator=g, dtype=torch.float64) < .3).double()
        y = torch.lerp(y, y2, torch.rand(bs, 1, generator=g, dtype=torch.float64))
    return x, y

def per_element(f, x, y):
    "The loss matrix of `f(logit, target, i, k)`, a plain loop over the elements in python floats"
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.array([[f(x[i, k], y[i, k], i, k) for k in range(x.shape[1])] for i in range(x.shape[0])])

sig = lambda v: 1/(1 + math.exp(-v))
softplus = lambda v: max(v, 0) + math.log1p(math.exp(-abs(v)))

def bce_ref(x, y, w=None):
    w = np.ones(x.shape[1]) if w is None else w
    return per_element(lambda z, t, i, k: -(w[k]*t*math.log(sig(z)) + (1-t)*math.log(1 - sig(z))), x, y)

def focal_ref(x, y, gamma):
    "Lin et al. (2017), sigmoid form: -(1-p)^γ log p on positives, -p^γ log(1-p) on negatives"
    f = lambda z, t, i, k: -(t*(1-sig(z))**gamma*math.log(sig(z)) + (1-t)*sig(z)**gamma*math.log(1 - sig(z)))
    return per_element(f, x, y)

def asl_ref(x, y, gn=4., gp=0., clip=.05, eps=1e-8):
    "Ridnik et al. (2021): L+ = (1-p)^γ+ log p, L- = p_m^γ- log(1-p_m), p_m = max(p - clip, 0), logs of max(·, eps)"
    def f(z, t, i, k):
        p = sig(z); pm = max(p - clip, 0.)
        return -(t*(1-p)**gp*math.log(max(p, eps)) + (1-t)*pm**gn*math.log(max(1 - pm, eps)))
    return per_element(f, x, y)

def db_ref(x, y, counts=COUNTS, n=N, a=.1, b=10., mu=.2, lam=2., kappa=.05, g=2., s=2.):
    "Wu et al. (2020): r = P^C_k/P^I_i, r̂ = α + σ(β(r-μ)), logits shifted by the prior and negatives scaled by λ"
    y_ = np.asarray(y, np.float64)
    def f(z, t, i, k):
        pc = 1/(len(counts)*counts[k])
        pi = sum(y_[i, j]/(len(counts)*counts[j]) for j in range(len(counts)))
        w = s*(a + (sig(b*(pc/pi - mu)) if pi > 0 else 1.))
        zz = z + kappa*math.log(counts[k]/(n - counts[k]))/lam  # the reference's init_bias: -log(N/n - 1)·κ/λ
        return t*w*(1 - sig(zz))**g*softplus(-zz) + (1-t)*w/lam*sig(lam*zz)**g*softplus(lam*zz)
    return per_element(f, x, y)

LOSSES = {  # name: (loss with reduction, reference per element)
    'bce': (lambda r: MultiLabelLoss(reduction=r), lambda x, y: bce_ref(x, y)),
    'weighted_bce': (lambda r: WeightedBCELoss(COUNTS, N, reduction=r),
                     lambda x, y: bce_ref(x, y, (N - COUNTS)/COUNTS)),
    'focal': (lambda r: FocalBCELoss(1.5, reduction=r), lambda x, y: focal_ref(x, y, 1.5)),
    'asl': (lambda r: AsymmetricLoss(reduction=r), lambda x, y: asl_ref(x, y)),
    'asl_noclip': (lambda r: AsymmetricLoss(3., 1., clip=0., reduction=r), lambda x, y: asl_ref(x, y, 3., 1., 0.)),
    'db': (lambda r: DistributionBalancedLoss(COUNTS, N, reduction=r), lambda x, y: db_ref(x, y)),
}

@pytest.mark.parametrize('soft', [False, True], ids=['hard', 'soft'])
@pytest.mark.parametrize('name', LOSSES)
def test_matches_formula(name, soft):
    make, ref = LOSSES[name]
    x, y = batch(seed=len(name), soft=soft)
    want = ref(x, y)
    per = make('none')(x, y)
    assert per.shape == (24, 5) and per.dtype == torch.float64
    # float64 logits and targets; the counts' weights and biases are kept in float32, as PyTorch's `pos_weight`
    np.testing.assert_allclose(per.numpy(), want, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(make('mean')(x, y).item(), want.mean(), rtol=1e-6)
    np.testing.assert_allclose(make('sum')(x, y).item(), want.sum(), rtol=1e-6)
    np.testing.assert_allclose(make('mean')(x.float(), y.float()).item(), want.mean(), rtol=1e-5)  # float32 too

# ---------------------------------------------------------------- against fastai, PyTorch and the reference codes
def test_weighted_bce_is_pytorchs_pos_weight():
    for soft in (False, True):
        x, y = batch(soft=soft)
        pw = torch.tensor((N - COUNTS)/COUNTS)
        fct.test_close(WeightedBCELoss(COUNTS, N)(x, y), F.binary_cross_entropy_with_logits(x, y, pos_weight=pw))
        fct.test_close(WeightedBCELoss(COUNTS, N)(x.float(), y.float()),
                       BCEWithLogitsLossFlat(pos_weight=pw.float())(x.float(), y.float()), eps=1e-4)

def test_pos_weights_edges():
    with pytest.warns(UserWarning, match=r'Findings without training positives \[0\], without negatives \[2\]'):
        w = pos_weights([0, 10, 50], 50)
    np.testing.assert_array_equal(w, [1., 4., 1.])
    np.testing.assert_array_equal(pos_weights([1, 10], 50, max_weight=10.), [10., 4.])

def asl_reference(x, y, gamma_neg=4, gamma_pos=0, clip=0.05, eps=1e-8, disable_torch_grad_focal_loss=True):
    "Alibaba-MIIL/ASL src/loss_functions/losses.py AsymmetricLoss.forward (commit 8c9e0bd), transcribed"
    x_sigmoid = torch.sigmoid(x)
    xs_pos, xs_neg = x_sigmoid, 1 - x_sigmoid
    if clip is not None and clip > 0: xs_neg = (xs_neg + clip).clamp(max=1)
    loss = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.set_grad_enabled(not disable_torch_grad_focal_loss):
            pt = xs_pos * y + xs_neg * (1 - y)
            one_sided_w = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
        loss = loss * one_sided_w
    return -loss.sum()

@pytest.mark.parametrize('focal_grad', [False, True])
def test_asl_matches_reference_code_and_its_gradient(focal_grad):
    x, y = batch(3)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = AsymmetricLoss(4., 1., reduction='sum', focal_grad=focal_grad)(xa, y)
    ref = asl_reference(xb, y, 4, 1, disable_torch_grad_focal_loss=not focal_grad)
    fct.test_close(ours, ref, eps=1e-9)
    ours.backward(); ref.backward()
    fct.test_close(xa.grad, xb.grad, eps=1e-9)

def db_reference(cls_score, label, class_freq, train_num, neg_scale=2., init_bias=.05, alpha=.1, beta=10., mu=.2,
                 gamma=2, balance_param=2.):
    "wutong16/DistributionBalancedLoss mllt/models/losses/resample_loss.py ResampleLoss.forward, rebalance, focal"
    freq_inv = 1 / class_freq
    bias = -torch.log(train_num / class_freq - 1) * init_bias / neg_scale
    repeat_rate = torch.sum(label * freq_inv, dim=1, keepdim=True)
    weight = torch.sigmoid(beta * (freq_inv.unsqueeze(0) / repeat_rate - mu)) + alpha
    logits = cls_score + bias  # the reference adds in place
    logits = logits * (1 - label) * neg_scale + logits * label
    weight = weight / neg_scale * (1 - label) + weight * label
    pt = torch.exp(-F.binary_cross_entropy_with_logits(logits, label, reduction='none'))
    loss = F.binary_cross_entropy_with_logits(logits, label, weight, reduction='none')
    return (balance_param * (1 - pt) ** gamma * loss).mean()  # mllt/apis/train.py parse_losses takes the mean

def test_db_matches_reference_code_and_its_gradient():
    x, y = batch(4)
    y[0] = 0  # an image with no finding: the reference's weight is σ(∞) + α
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = DistributionBalancedLoss(COUNTS, N)(xa, y)
    ref = db_reference(xb, y, torch.tensor(COUNTS), torch.tensor(float(N)))
    np.testing.assert_allclose(ours.item(), ref.item(), rtol=1e-6)  # our 1/n_k and biases are float32
    ours.backward(); ref.backward()
    np.testing.assert_allclose(xa.grad.numpy(), xb.grad.numpy(), rtol=1e-6, atol=1e-12)

def test_db_findings_without_positives_or_negatives_stay_finite():
    with pytest.warns(UserWarning, match=r'without training positives \[3\], without negatives \[4\]'):
        lf = DistributionBalancedLoss([700, 200, 60, 0, N], N, reduction='none')
    x, y = batch(5)
    x = x.clone().requires_grad_()
    loss = lf(x, y)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
    assert (lf.weights(y)[:, 3] == 1).all() and lf.nu[3] == 0 and lf.nu[4] == 0

@pytest.mark.parametrize('name', LOSSES)
def test_finite_gradient_at_extreme_logits(name):
    x = torch.tensor([[-200., -40., 0., 40., 200.]]*2, requires_grad=True)
    y = torch.tensor([[0., 1., .5, 0., 1.], [1., 0., .5, 1., 0.]])
    loss = LOSSES[name][0]('sum')(x, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()

@pytest.mark.parametrize('name', [n for n in LOSSES if n != 'db'])
def test_linear_in_targets(name):
    "Blending the targets blends the losses, element by element (the DB weights depend on the row, so not it)"
    lf = LOSSES[name][0]('none')
    x, y1 = batch(6)
    _, y2 = batch(7)
    for lam in (0., .3, torch.rand(24, 1, dtype=torch.float64)):
        fct.test_close(lf(x, torch.lerp(y1, y2, lam)), torch.lerp(lf(x, y1), lf(x, y2), lam), eps=1e-9)

# ---------------------------------------------------------------- fastai plumbing
@pytest.mark.parametrize('name', LOSSES)
def test_pickles_and_decodes(name):
    lf = LOSSES[name][0]('mean')
    x, y = batch(8)
    back = pickle.loads(pickle.dumps(lf))
    fct.test_close(back(x, y), lf(x, y), eps=1e-12)
    assert lf.y_int is False and back.reduction == 'mean'
    p = lf.activation(x)
    fct.test_close(p, torch.sigmoid(x))
    fct.test_eq(lf.decodes(p), p > .5)
    fct.test_eq(lf.decodes(p, thresh=.2), p > .2)

def test_thresh_is_used_by_decodes():
    lf = FocalBCELoss(thresh=.7)
    p = torch.tensor([.6, .8])
    fct.test_eq(lf.decodes(p), torch.tensor([False, True]))

@pytest.mark.parametrize('make, msg', [
    (lambda: FocalBCELoss(gamma=-1.), 'gamma=-1.0 must be a finite number >= 0'),
    (lambda: FocalBCELoss(gamma=float('nan')), 'gamma=nan must be a finite number >= 0'),
    (lambda: AsymmetricLoss(gamma_pos=-2), 'gamma_pos=-2 must be a finite number >= 0'),
    (lambda: AsymmetricLoss(clip=1.5), 'clip=1.5 must be a probability margin in [0, 1)'),
    (lambda: AsymmetricLoss(eps=2.), 'eps=2.0 must be a small number in [0, 1)'),
    (lambda: AsymmetricLoss(focal_grad='yes'), "focal_grad='yes' must be True or False"),
    (lambda: MultiLabelLoss(reduction='avg'), "reduction='avg' is not one of"),
    (lambda: MultiLabelLoss(thresh=True), 'thresh=True must be a probability in [0, 1]'),
    (lambda: WeightedBCELoss(COUNTS, 100), 'exceed n_items=100'),
    (lambda: WeightedBCELoss(COUNTS, 10.5), 'n_items=10.5 must be the number of training images'),
    (lambda: WeightedBCELoss([-1, 4], N), "can't be negative"),
    (lambda: WeightedBCELoss([[1, 4]], N), 'one count per class'),
    (lambda: WeightedBCELoss(COUNTS, N, max_weight=-1), 'max_weight=-1 must be a number > 0 or None'),
    (lambda: DistributionBalancedLoss(COUNTS, N, alpha=-.1), 'alpha=-0.1 must be a number >= 0'),
    (lambda: DistributionBalancedLoss(COUNTS, N, beta=0), 'beta=0 must be a number > 0'),
    (lambda: DistributionBalancedLoss(COUNTS, N, mu=float('inf')), 'mu=inf must be a finite number'),
    (lambda: DistributionBalancedLoss(COUNTS, N, neg_scale=0.), 'neg_scale=0.0 must be a number > 0'),
    (lambda: DistributionBalancedLoss(COUNTS, N, init_bias=None), 'init_bias=None must be a finite number'),
    (lambda: DistributionBalancedLoss(COUNTS, N, balance_param=0), 'balance_param=0 must be a number > 0'),
])
def test_bad_hyperparameters_one_line_errors(make, msg):
    with pytest.raises((ValueError, TypeError)) as e: make()
    assert msg in str(e.value) and '\n' not in str(e.value), str(e.value)

def test_bad_shapes():
    x, y = batch()
    with pytest.raises(ValueError, match='differ in shape'): FocalBCELoss()(x, y[:, 0].long())
    with pytest.raises(ValueError, match='counts for 5 findings but the model outputs'):
        DistributionBalancedLoss(COUNTS, N)(x[:, :4], y[:, :4])

# ---------------------------------------------------------------- training
def tiny_data():
    "Random vectors with five findings of falling frequency, and their targets"
    set_seed(0)
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(160, 5, generator=g) < torch.tensor([.5, .25, .1, .06, .04])).float()
    x = torch.randn(160, 8, generator=g) + y @ torch.randn(5, 8, generator=g)
    ds = torch.utils.data.TensorDataset(x, y)
    return DataLoaders.from_dsets(ds, ds, bs=32, shuffle=True, device='cpu'), y

LOSS_FOR = {'weighted_bce': lambda y: WeightedBCELoss(y.sum(0).numpy(), len(y)), 'focal': lambda y: FocalBCELoss(),
            'asl': lambda y: AsymmetricLoss(), 'db': lambda y: DistributionBalancedLoss(y.sum(0).numpy(), len(y))}

def fit_one(name, cb):
    "One epoch of a linear model with the loss `name` and the mixup callback `cb(targets)`"
    dls, y = tiny_data()
    learn = Learner(dls, nn.Linear(8, 5), loss_func=LOSS_FOR[name](y), cbs=cb(y))
    learn.remove_cb(ProgressCallback)
    with learn.no_logging(): learn.fit(1, 1e-2)
    assert len(learn.recorder.losses) and all(torch.isfinite(v).all() for v in learn.recorder.losses)
    assert all(np.isfinite(v).all() for v in learn.recorder.values)
    assert learn.loss_func.reduction == 'mean'
    return learn

@pytest.mark.parametrize('name', LOSS_FOR)
def test_fits_with_fastai_mixup(name):
    learn = fit_one(name, lambda y: MixUp(0.4))
    probs, targs, dec = learn.get_preds(with_decoded=True)
    assert probs.shape == (160, 5) and ((probs >= 0) & (probs <= 1)).all()
    fct.test_eq(dec, probs > .5)

class SoftSeen(Callback):
    "Records, for each training batch, whether the loss saw a blended (soft) target"
    def before_fit(self): self.seen = []
    def after_loss(self):
        if self.training: self.seen.append(bool(((self.y > 0) & (self.y < 1)).any()))

@pytest.mark.parametrize('name, per_sample', [(n, False) for n in LOSS_FOR] + [('db', True)])
def test_fits_with_balanced_mixup(name, per_sample):
    spy = SoftSeen()
    fit_one(name, lambda y: [BalancedMixUp(0.2, per_sample=per_sample, labels=y.numpy()), spy])
    assert any(spy.seen), 'the loss never saw a blended target'


def test_deferred_reweighting_weighs_each_finding_late_in_training():
    "DRW on findings: plain BCE until `start`, then class-balanced weights on each finding's term, put back after"
    from fastai.callback.core import Callback
    from fastai_bmx.losses import DeferredReweight, cb_weights
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    y = (x > torch.tensor([0., 1., 1.5])).float()
    counts = y.sum(0).tolist()
    seen = []
    class Spy(Callback):
        def after_loss(self):
            w = self.learn.loss_func.weight
            if self.training: seen.append(None if w is None else w.clone())
    ds = torch.utils.data.TensorDataset(x, y)
    dls = DataLoaders.from_dsets(ds, ds, bs=16, device="cpu")
    learn = Learner(dls, nn.Linear(3, 3), loss_func=MultiLabelLoss(), cbs=[DeferredReweight(0.5, 0.999, counts), Spy()])
    with learn.no_logging(), learn.no_bar(): learn.fit(2)
    assert seen[0] is None and torch.allclose(seen[-1], torch.as_tensor(cb_weights(counts, 0.999), dtype=torch.float32))
    assert learn.loss_func.weight is None  # put back after the fit
    w = torch.tensor([2., 1., .5])
    loss = MultiLabelLoss(reduction='none')
    plain = loss(x[:4], y[:4]); loss.weight = w
    torch.testing.assert_close(loss(x[:4], y[:4]), plain * w)
