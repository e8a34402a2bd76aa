"Tests of fastai_bmx.metrics against scikit-learn/SciPy and hand-written formulas"
import pickle, warnings
import numpy as np, pytest, torch
import sklearn.metrics as skm
import scipy.stats as scs
from torch import nn
import fastcore.test as fct
from hypothesis import given, settings, strategies as st
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.callback.tracker import SaveModelCallback
from fastai.metrics import F1Score
from fastai_bmx.metrics import (class_preds, quadratic_kappa, mcc, kendall_tau, balanced_accuracy, macro_f1,
                                QuadraticKappa, MCC, KendallTau, BalancedAccuracy, MacroF1)

FNS = (quadratic_kappa, mcc, kendall_tau, balanced_accuracy, macro_f1)
NAMES = ['quadratic_kappa', 'mcc', 'kendall_tau', 'balanced_accuracy', 'macro_f1']

# ---------------------------------------------------------------- independent formulas
def confusion(p, t, n):
    O = np.zeros((n, n)); np.add.at(O, (t, p), 1)
    return O

def qwk_np(p, t, n):
    O = confusion(p, t, n)
    E = np.outer(O.sum(1), O.sum(0)) / O.sum()
    W = np.subtract.outer(np.arange(n), np.arange(n))**2
    den = (W*E).sum()
    return 0. if den == 0 else 1 - (W*O).sum() / den

def mcc_np(p, t, n):
    "Gorodkin's multi-class MCC from the confusion matrix"
    C = confusion(p, t, n)
    s, c = C.sum(), np.trace(C)
    tk, pk = C.sum(1), C.sum(0)
    den = np.sqrt(s**2 - pk @ pk) * np.sqrt(s**2 - tk @ tk)
    return 0. if den == 0 else (c*s - tk @ pk) / den

def bal_acc_np(p, t):
    return np.mean([(p[t == k] == k).mean() for k in np.unique(t)])

def macro_f1_np(p, t):
    ks = np.union1d(p, t)
    return np.mean([2*((p == k) & (t == k)).sum() / ((p == k).sum() + (t == k).sum()) for k in ks])

def tau_b_np(x, y):
    "Kendall's tau-b by counting pairs"
    n = len(x); conc = disc = tx = ty = 0
    for i in range(n):
        for j in range(i+1, n):
            dx, dy = np.sign(x[i]-x[j]), np.sign(y[i]-y[j])
            if dx == 0 and dy == 0: continue
            if dx == 0: tx += 1
            elif dy == 0: ty += 1
            elif dx == dy: conc += 1
            else: disc += 1
    den = np.sqrt((conc+disc+tx) * (conc+disc+ty))
    return 0. if den == 0 else (conc - disc) / den

def hand(p, t, n):
    return [qwk_np(p, t, n), mcc_np(p, t, n), tau_b_np(p, t), bal_acc_np(p, t), macro_f1_np(p, t)]

def sk(p, t, n):
    "The library values, with the documented choices: labels for kappa, NaN -> 0 where undefined"
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        k = skm.cohen_kappa_score(t, p, weights='quadratic', labels=range(n))
        tau = scs.kendalltau(p, t).statistic
        return [0. if np.isnan(k) else k, skm.matthews_corrcoef(t, p), 0. if np.isnan(tau) else tau,
                skm.balanced_accuracy_score(t, p), skm.f1_score(t, p, average='macro')]

# ---------------------------------------------------------------- agreement
def test_random_probs_match_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 7):
        probs = rng.dirichlet(np.ones(n), size=300)
        t = rng.integers(0, n, 300)
        p = probs.argmax(1)
        got = [f(probs, t) for f in FNS]
        fct.test_close(got, sk(p, t, n), eps=1e-10)
        fct.test_close(got, hand(p, t, n), eps=1e-10)
        # raw library calls without any of our choices, where they apply
        fct.test_close(got[0], skm.cohen_kappa_score(t, p, weights='quadratic'), eps=1e-10)
        fct.test_close(got[2], scs.kendalltau(p, t).statistic, eps=1e-10)

@settings(max_examples=150, deadline=None)
@given(n=st.integers(2, 6), data=st.data())
def test_property_indices(n, data):
    N = data.draw(st.integers(1, 40))
    p = np.array(data.draw(st.lists(st.integers(0, n-1), min_size=N, max_size=N)))
    t = np.array(data.draw(st.lists(st.integers(0, n-1), min_size=N, max_size=N)))
    got = [f(p, t, n_classes=n) for f in FNS]
    assert all(isinstance(v, float) and np.isfinite(v) for v in got)
    fct.test_close(got, sk(p, t, n), eps=1e-9)
    fct.test_close(got, hand(p, t, n), eps=1e-9)
    assert -1 - 1e-12 <= min(got[:3]) and max(got) <= 1 + 1e-12 and min(got[3:]) >= 0

@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 6), N=st.integers(1, 30), seed=st.integers(0, 10**6))
def test_property_scores_equal_argmax(n, N, seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(N, n)).astype(np.float32)
    t = rng.integers(0, n, N)
    for f in FNS:
        fct.test_eq(f(scores, t), f(scores.argmax(1), t, n_classes=n))
        fct.test_eq(f(torch.from_numpy(scores), torch.from_numpy(t)), f(scores, t))
        fct.test_eq(f(scores, t[:, None]), f(scores, t))  # MedMNIST-style (N, 1) targets

@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 6), N=st.integers(2, 30), seed=st.integers(0, 10**6))
def test_property_symmetries(n, N, seed):
    "Perfect prediction scores 1 (when defined); MCC, kappa and tau are symmetric in preds/targs"
    rng = np.random.default_rng(seed)
    p, t = rng.integers(0, n, N), rng.integers(0, n, N)
    for f in (quadratic_kappa, mcc, kendall_tau):
        fct.test_close(f(p, t, n), f(t, p, n), eps=1e-12)
    if len(np.unique(t)) > 1:
        fct.test_close([f(t, t, n) for f in FNS], [1.]*5, eps=1e-12)

# ---------------------------------------------------------------- missing classes
def test_missing_class_in_the_middle():
    t = np.array([0, 2, 3, 4, 4, 3, 0, 2])
    p = np.array([0, 3, 3, 4, 2, 0, 0, 2])
    fct.test_close(quadratic_kappa(p, t, 5), qwk_np(p, t, 5))
    fct.test_close(quadratic_kappa(p, t, 5), skm.cohen_kappa_score(t, p, weights='quadratic', labels=range(5)))
    # without labels sklearn squeezes grades 0,2,3,4 into positions 0..3: a different (wrong) value
    assert abs(quadratic_kappa(p, t, 5) - skm.cohen_kappa_score(t, p, weights='quadratic')) > 0.01
    # n_classes defaults to 1 + the largest index (4 here): the same kappa
    fct.test_close(quadratic_kappa(p, t), quadratic_kappa(p, t, 5))
    fct.test_close(mcc(p, t, 5), mcc_np(p, t, 5))
    fct.test_close(balanced_accuracy(p, t, 5), np.mean([(p[t == k] == k).mean() for k in (0, 2, 3, 4)]))
    fct.test_close(macro_f1(p, t, 5), macro_f1_np(p, t))

def test_valid_set_with_three_of_five_classes():
    "Targets hold 3 of 5 classes; predictions also use an absent class"
    rng = np.random.default_rng(1)
    t = rng.choice([0, 2, 4], 100)
    probs = rng.dirichlet(np.ones(5), 100)
    p = probs.argmax(1)
    assert not set(np.unique(t)) >= set(np.unique(p))  # preds include a class not in targets
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # nothing escapes: no UndefinedMetricWarning, no zero_division warning
        got = [f(probs, t) for f in FNS]
    fct.test_close(got, hand(p, t, 5), eps=1e-10)
    fct.test_close(got, sk(p, t, 5), eps=1e-10)

def test_macro_f1_absent_class_choice():
    "A class absent from both preds and targs is left out (0/0), not counted as F1=0"
    t, p = np.array([0, 0, 2, 2, 2]), np.array([0, 2, 2, 2, 0])
    f = macro_f1(p, t, n_classes=5)
    fct.test_close(f, macro_f1_np(p, t))
    fct.test_close(f, skm.f1_score(t, p, labels=range(5), average='macro', zero_division=np.nan))
    fct.test_close(f, skm.f1_score(t, p, average='macro'))
    # sklearn with all 5 labels and its default zero_division scales it by 2/5 (and warns)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        fct.test_close(skm.f1_score(t, p, labels=range(5), average='macro', zero_division=0), f*2/5)
    # a class predicted but never true has F1 = 0 and counts
    p2 = np.array([0, 1, 2, 2, 2])
    fct.test_close(macro_f1(p2, t, 5), macro_f1_np(p2, t))
    fct.test_close(macro_f1(p2, t, 5), np.mean([2*1/(1+2), 0., 2*3/(3+3)]))

def test_fastai_f1score_default_is_binary():
    "The trap MacroF1 avoids: fastai's F1Score averages 'binary' and fails on multi-class targets"
    probs, t = torch.randn(20, 3), torch.arange(20) % 3
    m = F1Score(); m.reset(); m.accum_values(probs.argmax(1), t)  # what `accumulate` stores after the argmax
    with pytest.raises(ValueError, match="average='binary'"): m.value
    fct.test_close(MacroF1()(probs, t), skm.f1_score(t.numpy(), probs.argmax(1).numpy(), average='macro'))

# ---------------------------------------------------------------- degenerate cases
def test_constant_predictions():
    t = np.array([0, 1, 2, 3, 4, 4, 2, 1])
    for k in range(5):
        c = np.full_like(t, k)
        fct.test_close([quadratic_kappa(c, t, 5), mcc(c, t), kendall_tau(c, t)], [0., 0., 0.], eps=1e-12)
        fct.test_close(balanced_accuracy(c, t), 1/5)
        fct.test_close(macro_f1(c, t), macro_f1_np(c, t))

def test_undefined_values():
    c = np.zeros(6, dtype=int)
    fct.test_eq([quadratic_kappa(c, c, 5), mcc(c, c), kendall_tau(c, c)], [0., 0., 0.])
    fct.test_eq([balanced_accuracy(c, c), macro_f1(c, c)], [1., 1.])
    assert np.isnan(quadratic_kappa(c, c, 5, undefined=np.nan))
    assert np.isnan(kendall_tau(c, c, undefined=np.nan))
    fct.test_eq(kendall_tau([1], [1]), 0.)  # a single item
    fct.test_eq(quadratic_kappa([1], [1], 3), 0.)

def test_bad_input():
    fct.test_fail(lambda: mcc([0, 1], [0, 1, 1]), contains='2 predictions for 3 targets')
    fct.test_fail(lambda: quadratic_kappa([0, 6], [0, 1], n_classes=5), contains='beyond the vocabulary of 5 classes')
    fct.test_fail(lambda: quadratic_kappa([0, 1], [0, 7], n_classes=5), contains='targs contain class index 7')
    fct.test_fail(lambda: macro_f1(np.random.rand(4, 5), [0, 1, 2, 3], n_classes=4), contains='scores for 5 classes but n_classes=4')
    fct.test_fail(lambda: mcc([0, -1], [0, 1]), contains='negative class index')
    fct.test_fail(lambda: mcc([], []), contains='empty')
    fct.test_fail(lambda: mcc([.2, .7], [0, 1]), contains='floats')
    p, t, n = class_preds(np.eye(3)[[2, 0]], [2, 1])
    fct.test_eq((p, t, n), (np.array([2, 0]), np.array([2, 1]), 3))

# ---------------------------------------------------------------- fastai integration
def test_metric_objects():
    probs, t = torch.randn(50, 5), torch.randint(0, 5, (50,))
    ms = [QuadraticKappa(), MCC(), KendallTau(), BalancedAccuracy(), MacroF1()]
    fct.test_eq([m.name for m in ms], NAMES)
    fct.test_close([m(probs, t) for m in ms], [f(probs, t) for f in FNS], eps=1e-12)
    # accumulated over batches == one call on everything
    m = QuadraticKappa(); m.reset()
    for i in range(0, 50, 16): m.accum_values(probs[i:i+16], t[i:i+16])
    fct.test_close(m.value, quadratic_kappa(probs, t), eps=1e-12)
    fct.test_close(QuadraticKappa(n_classes=5)(probs, t), quadratic_kappa(probs, t))
    fct.test_fail(lambda: QuadraticKappa(n_classes=7)(probs, t), contains='scores for 5 classes but n_classes=7')
    m2 = pickle.loads(pickle.dumps(MacroF1()))
    fct.test_close(m2(probs, t), macro_f1(probs, t))

def _make_ds(n, classes, g):
    y = torch.tensor(classes)[torch.randint(0, len(classes), (n,), generator=g)]
    return torch.utils.data.TensorDataset(torch.randn(n, 4, generator=g) + y[:, None].float(), y)

def test_learner_save_best_kappa(tmp_path):
    g = torch.Generator().manual_seed(0); torch.manual_seed(0)
    dls = DataLoaders.from_dsets(_make_ds(200, [0, 1, 2, 3, 4], g), _make_ds(60, [0, 2, 4], g), bs=32)
    learn = Learner(dls, nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 5)), loss_func=CrossEntropyLossFlat(),
                    metrics=[QuadraticKappa(), MCC(), KendallTau(), BalancedAccuracy(), MacroF1()], path=tmp_path,
                    cbs=SaveModelCallback(monitor='quadratic_kappa', fname='best'))
    with learn.no_logging(): learn.fit(2, 1e-2)
    fct.test_eq(list(learn.recorder.metric_names[3:8]), NAMES)
    assert (tmp_path/'models'/'best.pth').exists()
    vals = np.array(learn.recorder.values, dtype=float)[:, 2:]
    assert np.isfinite(vals).all()
    best = vals[vals[:, 0].argmax()]
    probs, t = learn.get_preds(dl=dls.valid)  # the best checkpoint was reloaded after fit
    p, t = probs.argmax(1).numpy(), t.numpy()
    fct.test_close(best, sk(p, t, 5), eps=1e-6)
    fct.test_close(best, hand(p, t, 5), eps=1e-6)

def test_real_data_baselines(real_data):
    d = np.load(real_data('retinamnist.npz'))
    ytr, yte = d['train_labels'][:, 0].astype(int), d['test_labels'][:, 0].astype(int)
    Xtr = d['train_images'].reshape(len(ytr), -1) / 255.
    Xte = d['test_images'].reshape(len(yte), -1) / 255.
    means = np.stack([Xtr[ytr == k].mean(0) for k in range(5)])
    ncm = ((Xte[:, None, :] - means[None])**2).sum(-1).argmin(1)
    majority = np.full(len(yte), np.bincount(ytr).argmax())
    for p in (ncm, majority):
        fct.test_close([f(p, d['test_labels'], n_classes=5) for f in FNS], sk(p, yte, 5), eps=1e-10)
    fct.test_close([f(majority, yte, 5) for f in FNS[:4]], [0., 0., 0., .2], eps=1e-12)
