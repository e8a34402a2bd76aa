"BalancedMixUp: statistics of the partner batches and of λ, exact mixing, loss handling, faults and fastai integration"
import numpy as np, torch, pytest
from torch import nn
import torch.nn.functional as F
from scipy import stats
import fastcore.test as fct
from fastai.data.core import DataLoaders, TfmdDL
from fastai.learner import Learner, load_learner
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.progress import ProgressCallback
import fastai.callback.schedule  # patches in Learner.lr_find and fit_one_cycle
from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat, FocalLossFlat
from fastai.torch_core import set_seed
from fastai_bmx.mixup import BalancedMixUp, lam_distrib, check_alpha, bmx_class_mass
from fastai_bmx.sampling import class_probs

def blobs(counts, seed=0, d=2):
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), j) for j, n in enumerate(counts)])
    return torch.utils.data.TensorDataset(torch.randn(len(y), d, generator=g) + y[:, None].float(), y)

def make_dls(counts=(300, 80, 30, 10), bs=32, seed=0):
    set_seed(seed)
    return DataLoaders.from_dsets(blobs(counts, seed), blobs([20]*len(counts), seed+1), bs=bs, device='cpu')

def make_learn(dls=None, cbs=(), loss_func=None, n_out=4, **kw):
    dls = dls or make_dls()
    learn = Learner(dls, nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, n_out)),
                    loss_func=loss_func or CrossEntropyLossFlat(), cbs=list(cbs), **kw)
    learn.remove_cb(ProgressCallback)
    return learn

def fit(learn, *args, **kw):
    with learn.no_logging(): learn.fit(*args, **kw)

class StepLog(Callback):
    "Record, per training step, the inputs before and after mixing, the partner batch, λ, prediction and loss"
    def __init__(self, order): self.order = order
    run_valid = False
    def before_fit(self): self.rows = []
    def before_batch(self):
        cb = getattr(self.learn, 'balanced_mix_up', None)
        row = dict(x=self.x.clone(), y=self.y.clone())
        if cb is not None and self.order > cb.order:
            row.update(x1=cb.xb1[0].clone(), y1=cb.yb1[0].clone(), lam=cb.balanced_lam.clone())
        self.rows.append(row)
    def after_loss(self): self.rows[-1].update(pred=self.pred.detach().clone(), loss=self.loss.detach().clone())

# --- statistics over many steps ----------------------------------------------------------------------------------

def test_partner_batches_are_class_balanced():
    learn = make_learn(cbs=[BalancedMixUp(0.2), StepLog(order=1)])
    fit(learn, 12, 1e-2)
    y_part = torch.cat([r['y1'] for r in learn.step_log.rows]).numpy()
    y_inst = torch.cat([r['y'] for r in learn.step_log.rows]).numpy()
    assert len(y_part) > 4000
    assert stats.chisquare(np.bincount(y_part, minlength=4)).pvalue > 1e-3           # uniform over classes
    assert stats.chisquare(np.bincount(y_inst, minlength=4)).pvalue < 1e-12          # the test can tell

@pytest.mark.parametrize('alpha', [0.1, 0.3])
def test_lam_follows_beta_alpha_1(alpha):
    set_seed(0)
    lams = lam_distrib(alpha).sample((20_000,)).numpy()
    assert stats.kstest(lams, lambda x: np.clip(x, 0, 1)**alpha).pvalue > 1e-3   # CDF of Beta(α,1) is x**α
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue < 1e-6       # not fastai MixUp's Beta(α,α)
    se = lams.std() / np.sqrt(len(lams))
    assert abs((1 - lams.mean()) - 1/(1 + alpha)) < 4*se                        # instance batch's mean weight

def test_lam_in_training_follows_beta():
    learn = make_learn(cbs=[BalancedMixUp(0.3), StepLog(order=1)])
    fit(learn, 25, 1e-2)
    lams = np.array([float(r['lam']) for r in learn.step_log.rows])
    assert len(lams) > 250
    assert stats.kstest(lams, lambda x: np.clip(x, 0, 1)**0.3).pvalue > 1e-3

# --- class mass per step -----------------------------------------------------------------------------------------

DERMA = [228, 359, 769, 80, 779, 4693, 99]  # DermaMNIST's training items per class; df (index 3) is the rarest
P_DERMA = np.array(DERMA) / sum(DERMA)

@pytest.mark.parametrize('alpha', [0.1, 0.2, 0.3, 2.])
def test_class_mass_is_the_expected_loss_weight(alpha):
    m = bmx_class_mass(DERMA, alpha)
    assert m.shape == (7,) and m.dtype == np.float64
    fct.test_close(m.sum(), 1, eps=1e-12)
    fct.test_close(m, P_DERMA/(1 + alpha) + alpha/((1 + alpha)*7), eps=1e-12)  # E[1-λ]·n_j/N + E[λ]·1/C

def test_class_mass_limits_and_trend():
    fct.test_close(bmx_class_mass(DERMA, 1e-9), P_DERMA, eps=1e-8)         # α → 0: instance sampling
    fct.test_close(bmx_class_mass(DERMA, 1e9), np.full(7, 1/7), eps=1e-8)  # α → ∞: class-balanced sampling
    m = np.stack([bmx_class_mass(DERMA, a) for a in (0.05, 0.1, 0.2, 0.3, 1, 5)])
    assert (np.diff(m[:, 3]) > 0).all()  # df, the rarest class, gains with α
    assert (np.diff(m[:, 5]) < 0).all()  # nv, the largest, loses
    fct.test_close(m[2, 3], 0.0333, eps=5e-4)  # the number the docs quote: 3.3% at α = 0.2, from 1.1%

def test_class_mass_partner_q():
    fct.test_close(bmx_class_mass(DERMA, 0.3, q=1), P_DERMA)  # instance-sampled partners change nothing
    fct.test_close(bmx_class_mass(DERMA, 0.3, q=.5), (P_DERMA + 0.3*class_probs(DERMA, .5))/1.3)
    with pytest.raises(ValueError, match='q=0.5 square-root'): bmx_class_mass(DERMA, 0.2, q=2)

def test_class_mass_empty_class():
    m = bmx_class_mass([30, 0, 10], 0.2)
    assert m[1] == 0  # a class with no items is never drawn, not even by the balanced partner
    fct.test_close(m, [(.75 + .1)/1.2, 0, (.25 + .1)/1.2])  # so C counts the 2 classes that have items
    fct.test_close(bmx_class_mass([0, 5], 0.2), [0, 1])

@pytest.mark.parametrize('counts', [tuple(DERMA), np.array(DERMA, dtype=np.uint16), torch.tensor(DERMA),
                                    np.array(DERMA, dtype=float), P_DERMA])
def test_class_mass_input_types(counts):
    fct.test_close(bmx_class_mass(counts, 0.2), bmx_class_mass(DERMA, 0.2))  # proportions work too: only ratios matter

@pytest.mark.parametrize('alpha', [0, -0.1, float('nan'), float('inf'), '0.2', None, True])
def test_class_mass_bad_alpha(alpha):
    with pytest.raises(ValueError, match='must be a finite number > 0'): bmx_class_mass(DERMA, alpha)

@pytest.mark.parametrize('counts,err,msg', [
    ([], ValueError, r'one item count per class .* shape \(0,\)'),
    ([[1, 2], [3, 4]], ValueError, r'findings must be 0/1 \(multi-hot\), but hold 2'),  # 2-D: findings, not counts
    (np.ones((2, 2, 2)), ValueError, r'shape \(2, 2, 2\)'),
    (5, ValueError, r'shape \(\)'),
    ([5, -1], ValueError, 'finite and ≥ 0'),
    ([5, float('nan')], ValueError, 'finite and ≥ 0'),
    ([5, float('inf')], ValueError, 'finite and ≥ 0'),
    ([0, 0, 0], ValueError, 'Every count is 0'),
    (['a', 'b'], TypeError, 'must be numbers'),
    ([True, False], TypeError, 'must be numbers'),
])
def test_class_mass_bad_counts(counts, err, msg):
    with pytest.raises(err, match=msg): bmx_class_mass(counts, 0.2)

def test_class_mass_matches_training():
    "Over a run, each class's share of the λ-weighted loss is what `bmx_class_mass` predicts"
    counts = (300, 80, 30, 10)
    learn = make_learn(make_dls(counts), cbs=[BalancedMixUp(0.3, per_sample=True), StepLog(order=1)])
    fit(learn, 10, 1e-2)  # one λ per item: over 4,000 draws, so the mean weight is close to its expectation
    w = np.zeros(4)
    for r in learn.step_log.rows:
        lam = r['lam'].double().numpy()
        w += np.bincount(r['y'].numpy(), 1 - lam, minlength=4) + np.bincount(r['y1'].numpy(), lam, minlength=4)
    m = bmx_class_mass(counts, 0.3)
    fct.test_close(w/w.sum(), m, eps=0.015)
    assert abs(w[3]/w.sum() - m[3]) < abs(w[3]/w.sum() - counts[3]/sum(counts))  # closer to it than to instance sampling

# --- exact mixing -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('per_sample', [False, True])
def test_mixed_batch_is_exact_blend_of_the_normal_batch(per_sample):
    learn = make_learn(cbs=[StepLog(order=-1), BalancedMixUp(0.2, per_sample=per_sample), StepLog(order=1)])
    logs = [cb for cb in learn.cbs if isinstance(cb, StepLog)]
    fit(learn, 2, 1e-2)
    before, after = sorted(logs, key=lambda c: c.order)
    for b, a in zip(before.rows, after.rows):
        lam = a['lam'].view(-1, 1) if per_sample else a['lam']
        if per_sample: fct.test_eq(a['lam'].shape, b['y'].shape)
        fct.test_close(a['x'], (1 - lam)*b['x'] + lam*a['x1'], eps=1e-6)
        fct.test_eq(a['y'], b['y'])  # labels stay the instance labels; the loss carries the partner's

def test_instance_batches_are_the_plain_training_batches():
    "With the same seed, the pre-mix batches are exactly those of training without the callback"
    runs = []
    for cbs in ([StepLog(order=-1), BalancedMixUp(0.2)], [StepLog(order=-1)]):
        dls = make_dls(seed=5)
        learn = make_learn(dls, cbs=cbs)
        fit(learn, 2, 1e-2)
        runs.append(learn.step_log.rows)
    fct.test_eq(len(runs[0]), len(runs[1]))
    for a, b in zip(*runs): fct.test_eq(a['x'], b['x'])

@pytest.mark.parametrize('loss_func', [CrossEntropyLossFlat(), LabelSmoothingCrossEntropyFlat(), FocalLossFlat(gamma=2.),
                                       nn.CrossEntropyLoss()], ids=['ce', 'label_smoothing', 'focal', 'torch_ce'])
@pytest.mark.parametrize('per_sample', [False, True])
def test_loss_is_lambda_weighted(loss_func, per_sample):
    learn = make_learn(cbs=[BalancedMixUp(0.3, per_sample=per_sample), StepLog(order=1)], loss_func=loss_func)
    fit(learn, 1, 1e-2)
    for r in learn.step_log.rows[:5]:
        loss_none = lambda y: type(loss_func)(**({'gamma': 2.} if isinstance(loss_func, FocalLossFlat) else {}), reduction='none')(r['pred'], y)
        expected = ((1 - r['lam'])*loss_none(r['y']) + r['lam']*loss_none(r['y1'])).mean()
        fct.test_close(r['loss'], expected, eps=1e-5)
    assert learn.loss_func is loss_func

# --- validation, restore, faults ---------------------------------------------------------------------------------

class ValidLog(Callback):
    run_train = False
    def before_fit(self): self.xs = []
    def before_batch(self): self.xs.append(self.x.clone())

def test_validation_and_preds_are_never_mixed():
    dls = make_dls()
    learn = make_learn(dls, cbs=[BalancedMixUp(0.3), ValidLog()])
    fit(learn, 1, 1e-2)
    raw = [xb for xb, _ in dls.valid]
    fct.test_eq(len(learn.valid_log.xs), len(raw))
    for a, b in zip(learn.valid_log.xs, raw): fct.test_eq(a, b)
    preds, _ = learn.get_preds(dl=dls.valid)
    fct.test_close(preds, torch.softmax(learn.model(torch.cat(raw)), 1).detach(), eps=1e-6)

class CancelAt(Callback):
    def __init__(self, n, exc): self.n, self.exc = n, exc
    def before_fit(self): self.i = 0
    def after_batch(self):
        self.i += 1
        if self.training and self.i == self.n: raise self.exc

def test_loss_restored_after_fit_and_cancel():
    loss_func = CrossEntropyLossFlat()
    learn = make_learn(cbs=[BalancedMixUp(0.2)], loss_func=loss_func)
    fit(learn, 1, 1e-2)
    assert learn.loss_func is loss_func
    learn.add_cb(CancelAt(3, CancelFitException()))
    fit(learn, 2, 1e-2)
    assert learn.loss_func is loss_func and learn.balanced_mix_up._partner_it is None
    learn.remove_cb(learn.cancel_at)
    fit(learn, 1, 1e-2)  # a second fit works
    assert learn.loss_func is loss_func

class BreakingModel(nn.Module):
    def __init__(self): super().__init__(); self.lin, self.calls, self.fail_at = nn.Linear(2, 4), 0, None
    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at: raise RuntimeError('boom')
        return self.lin(x)

@pytest.mark.parametrize('exc', [RuntimeError, KeyboardInterrupt])
def test_learner_usable_after_error_mid_epoch(exc):
    loss_func = CrossEntropyLossFlat()
    model = BreakingModel()
    learn = Learner(make_dls(), model, loss_func=loss_func, cbs=BalancedMixUp(0.2))
    learn.remove_cb(ProgressCallback)
    if exc is KeyboardInterrupt: learn.add_cb(CancelAt(4, KeyboardInterrupt()))
    else: model.fail_at = 5
    with pytest.raises(exc): fit(learn, 1, 1e-2)
    model.fail_at = None
    if exc is KeyboardInterrupt: learn.remove_cb(learn.cancel_at)
    # fastai fires no event on such errors; validation still uses the original loss, unmixed
    xb, yb = learn.dls.valid.one_batch()
    val_loss = learn.validate()[0]
    fct.test_close(val_loss, float(loss_func(learn.model(torch.cat([x for x,_ in learn.dls.valid])),
                                              torch.cat([y for _,y in learn.dls.valid]))), eps=1e-4)
    fit(learn, 1, 1e-2)  # the next fit starts clean and restores the loss at its end
    assert learn.loss_func is loss_func

def test_lr_find_works():
    loss_func = CrossEntropyLossFlat()
    learn = make_learn(make_dls(bs=16), cbs=[BalancedMixUp(0.2)], loss_func=loss_func)
    w0 = [p.detach().clone() for p in learn.model.parameters()]
    with learn.no_logging(): res = learn.lr_find(num_it=30, show_plot=False)
    assert np.isfinite(res.valley) and len(learn.recorder.losses) > 5
    assert learn.loss_func is loss_func
    for a, p in zip(w0, learn.model.parameters()): fct.test_eq(a, p.detach())  # lr_find restores the weights

def test_rebuilds_partner_when_dls_change():
    learn = make_learn(cbs=[BalancedMixUp(0.2)])
    fit(learn, 1, 1e-2)
    cb = learn.balanced_mix_up
    first = cb.partner_dl
    fit(learn, 1, 1e-2)
    assert cb.partner_dl is first  # unchanged dls: reused
    learn.dls = make_dls(counts=(50, 10, 5, 40), seed=3)
    fit(learn, 1, 1e-2)
    assert cb.partner_dl is not first and cb.partner_dl.dataset is learn.dls.train.dataset

def test_partner_reiterates_when_exhausted():
    learn = make_learn(cbs=[BalancedMixUp(0.2)])
    cb = learn.balanced_mix_up
    cb.learn = learn
    cb.before_fit(); cb._setup_partner()
    n = len(cb.partner_dl)
    ys = [cb._partner_batch(32)[1][0] for _ in range(2*n + 3)]
    assert all(len(y) == 32 for y in ys)

def test_reproducible_with_set_seed():
    runs = []
    for _ in range(2):
        dls = make_dls(seed=7)
        set_seed(11, reproducible=True)
        learn = make_learn(dls, cbs=[BalancedMixUp(0.2), StepLog(order=1)])
        fit(learn, 2, 1e-2)
        runs.append(learn.step_log.rows)
    for a, b in zip(*runs):
        fct.test_eq(a['y1'], b['y1']); fct.test_eq(a['lam'], b['lam']); fct.test_eq(a['loss'], b['loss'])

# --- bad input, all raised before any training step ----------------------------------------------------------------

@pytest.mark.parametrize('alpha', [0, -0.2, float('nan'), float('inf'), '0.2', None, True])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match=r'alpha=.* must be a finite number > 0.*0.1, 0.2 or 0.3'): BalancedMixUp(alpha)

def _params(learn): return [p.detach().clone() for p in learn.model.parameters()]

@pytest.mark.parametrize('case', ['one_class', 'float_targets', 'too_few_items', 'labels_length', 'int_inputs'])
def test_bad_training_data_fails_before_any_step(case):
    if case == 'one_class': dls, cb, msg = make_dls(counts=(50,)), BalancedMixUp(), 'only one class'
    elif case == 'too_few_items': dls, cb, msg = make_dls(counts=(10, 5), bs=32), BalancedMixUp(), 'fewer than one batch of 32'
    elif case == 'labels_length': dls, cb, msg = make_dls(), BalancedMixUp(labels=[0, 1, 2]), 'Got 3 labels for a dataset of 420'
    elif case == 'float_targets':
        ds = torch.utils.data.TensorDataset(torch.randn(64, 2), torch.randn(64))
        dls, cb, msg = DataLoaders.from_dsets(ds, ds, bs=16, device='cpu'), BalancedMixUp(), 'regression targets'
    else:
        ds = torch.utils.data.TensorDataset(torch.randint(0, 5, (64, 2)), torch.arange(64) % 2)
        dls, cb, msg = DataLoaders.from_dsets(ds, ds, bs=16, device='cpu'), BalancedMixUp(), 'must be float tensors'
    learn = make_learn(dls, cbs=[cb], loss_func=nn.MSELoss() if case == 'float_targets' else None)
    if case == 'int_inputs': learn.model = nn.Sequential(nn.Embedding(5, 4), nn.Flatten(), nn.Linear(8, 4))
    w0 = _params(learn)
    with pytest.raises((ValueError, TypeError), match=msg): fit(learn, 1, 1e-2)
    for a, p in zip(w0, learn.model.parameters()): fct.test_eq(a, p.detach())


# --- precision --------------------------------------------------------------------------------------------------------

class ToFloat(nn.Module):
    def forward(self, x): return x.float()

@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float64])
def test_mixing_happens_in_the_batch_dtype(dtype):
    "Low-precision (or double) inputs are blended in their own dtype: no silent upcast, no extra float32 copy"
    set_seed(0)
    cast = lambda ds: torch.utils.data.TensorDataset(ds.tensors[0].to(dtype), ds.tensors[1])
    dls = DataLoaders.from_dsets(cast(blobs((300, 80, 30, 10))), cast(blobs([20]*4, 1)), bs=32, device='cpu')
    learn = Learner(dls, nn.Sequential(ToFloat(), nn.Linear(2, 4)), loss_func=CrossEntropyLossFlat(),
                    cbs=[StepLog(order=-1), BalancedMixUp(0.3), StepLog(order=1)])
    learn.remove_cb(ProgressCallback)
    fit(learn, 1, 1e-2)
    before, after = sorted([cb for cb in learn.cbs if isinstance(cb, StepLog)], key=lambda c: c.order)
    for b, a in zip(before.rows, after.rows):
        fct.test_eq(a['x'].dtype, dtype)
        expected = ((1 - a['lam'].double()) * b['x'].double() + a['lam'].double() * a['x1'].double())
        tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float64: 1e-6}[dtype]  # λ is drawn in float32
        torch.testing.assert_close(a['x'].double(), expected, rtol=tol, atol=tol)

@pytest.mark.skipif(not torch.cuda.is_available(), reason="to_fp16 (CUDA AMP) needs a GPU; the dtype handling is tested on CPU above")
def test_to_fp16_trains_on_cuda():
    set_seed(0)
    dls = DataLoaders.from_dsets(blobs((300, 80, 30, 10)), blobs([20]*4, 1), bs=32, device='cuda')
    learn = Learner(dls, nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 4)), loss_func=CrossEntropyLossFlat(),
                    cbs=[BalancedMixUp(0.2), StepLog(order=1)]).to_fp16()
    learn.remove_cb(ProgressCallback)
    fit(learn, 2, 1e-2)
    rows = [cb for cb in learn.cbs if isinstance(cb, StepLog)][0].rows
    assert all(r['x'].dtype == torch.float32 for r in rows)  # AMP keeps inputs in float32; autocast works inside the model
    assert all(torch.isfinite(r['loss']) for r in rows)
    assert isinstance(learn.loss_func, CrossEntropyLossFlat)


# ---------------------------------------------------------------- stop
def test_stop_leaves_the_batches_after_it_unmixed():
    "BalancedMixUp(stop=0.5): batches of the first half are mixed, those of the second half are the plain batch and loss"
    torch.manual_seed(0)
    xs, ys = torch.randn(80, 3, 4, 4), torch.cat([torch.zeros(70), torch.ones(10)]).long()
    ds = list(zip(xs, ys))
    dls = DataLoaders.from_dsets(ds, ds[:16], bs=8, device='cpu')
    raw, mixed = [], []
    class Before(Callback):
        order = -1
        def before_batch(self):
            if self.training: raw.append(self.learn.xb[0].clone())
    class After(Callback):
        order = 1
        def before_batch(self):
            if self.training: mixed.append(not torch.equal(self.learn.xb[0], raw[-1]))
    bmx = BalancedMixUp(0.5, stop=0.5, labels=ys)
    learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(48, 2)), loss_func=CrossEntropyLossFlat(), cbs=[bmx, Before(), After()])
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2)
    fct.test_eq(len(mixed), 20)
    assert all(mixed[:10]) and not any(mixed[10:]), mixed  # pct_train reaches 0.5 at the first batch of epoch 2
    with pytest.raises(ValueError, match='fraction'): BalancedMixUp(0.2, stop=2)
