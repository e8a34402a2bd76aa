"Tests of fastai_bmx.bootstrap: stratified bootstrap of any metric, its vectorised path, and formatting"
import functools, time, warnings
import numpy as np, pandas as pd, pytest, torch
import torch.nn.functional as F
from torch import nn
import sklearn.metrics as skm
from hypothesis import given, settings, strategies as st, HealthCheck
import fastcore.test as fct
from fastai.learner import Learner
from fastai.data.core import DataLoaders
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import AccumMetric, skm_to_fastai, ActivationType
from fastai.optimizer import SGD
from fastai.callback.progress import *  # Learner.no_bar
from fastai_bmx.evaluation import *
from fastai_bmx.bootstrap import *
from fastai_bmx.bootstrap import draw_resample
import fastai_bmx.bootstrap as ev
from fastai_bmx.splits import stratified_kfold, kfold_splitter
from fastai_bmx.app.report.results import fold_summary
from fastai_bmx.app.run.training import fit_paper_recipe
from fastai_bmx.metrics import quadratic_kappa, mcc, balanced_accuracy, macro_f1, QuadraticKappa, MCC, BalancedAccuracy, MacroF1
from helpers import toy_learner, fake_preds

QK = functools.partial(skm.cohen_kappa_score, weights='quadratic')
MF1 = functools.partial(skm.f1_score, average='macro')
SK4 = {'kappa': QK, 'mcc': skm.matthews_corrcoef, 'bacc': skm.balanced_accuracy_score, 'f1': MF1}


def ref_bootstrap(p, t, fs, n, seed, stratified=True):
    "Independent reference: same resample stream, every metric called by sklearn on every resample"
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(t == c) for c in np.unique(t)] if stratified else None
    lab = p.argmax(1) if p.ndim == 2 else p
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        idxs = (draw_resample(rng, len(t), groups) for _ in range(n))
        return np.array([[f(t[i], lab[i]) for f in fs] for i in idxs]).T


# ---------------------------------------------------------------- bootstrap
@pytest.mark.parametrize('stratified', [True, False])
def test_bootstrap_matches_sklearn_per_resample(stratified):
    p, t = fake_preds()
    fs = list(SK4.values()) + [skm.accuracy_score, functools.partial(skm.cohen_kappa_score, weights='linear'),
                               skm.cohen_kappa_score]
    names = list(SK4) + ['acc', 'lin', 'kappa0']
    df = bootstrap_metrics(p, t, dict(zip(names, fs)), n=80, stratified=stratified, seed=5)
    ref = ref_bootstrap(p, t, fs, 80, 5, stratified)
    a = 0.025
    fct.test_close(df['mean'].values, ref.mean(1), eps=1e-12)
    fct.test_close(df['std'].values, ref.std(1, ddof=1), eps=1e-12)
    fct.test_close(df['lo'].values, np.quantile(ref, a, axis=1), eps=1e-12)
    fct.test_close(df['hi'].values, np.quantile(ref, 1 - a, axis=1), eps=1e-12)
    fct.test_close(df['point'].values, [f(t, p.argmax(1)) for f in fs], eps=1e-12)
    fct.test_eq(list(df.columns), ['point', 'mean', 'std', 'lo', 'hi'])


def test_bootstrap_single_item_class_and_counts():
    p, t = fake_preds(n=60, k=3)
    assert (t == 3).sum() == 1
    rng = np.random.default_rng(0)
    groups = [np.flatnonzero(t == c) for c in np.unique(t)]
    for _ in range(20):
        i = draw_resample(rng, len(t), groups)
        fct.test_eq(np.bincount(t[i]), np.bincount(t))  # class counts kept
        assert (i[t[i] == 3] == np.flatnonzero(t == 3)).all()
    df = bootstrap_metrics(p, t, SK4, n=50, seed=0)
    assert np.isfinite(df.values).all()


def test_bootstrap_plain_resample_can_drop_class():
    "Non-stratified: the single-item class vanishes from some resamples; sklearn semantics still hold exactly"
    p, t = fake_preds(n=40, k=3, seed=2)
    fs = [QK, skm.matthews_corrcoef, MF1]
    df = bootstrap_metrics(p, t, fs, n=100, stratified=False, seed=1)
    rng = np.random.default_rng(1)
    dropped = sum((t[draw_resample(rng, len(t), None)] == 3).sum() == 0 for _ in range(100))
    assert dropped > 0
    fct.test_close(df['mean'].values, ref_bootstrap(p, t, fs, 100, 1, False).mean(1), eps=1e-12)


def test_bootstrap_preds_vs_probs_and_tensors():
    p, t = fake_preds()
    a = bootstrap_metrics(p, t, SK4, n=30)
    b = bootstrap_metrics(torch.tensor(p.argmax(1)), torch.tensor(t), SK4, n=30)
    pd.testing.assert_frame_equal(a, b)


def test_bootstrap_determinism():
    p, t = fake_preds()
    pd.testing.assert_frame_equal(bootstrap_metrics(p, t, SK4, n=40, seed=3), bootstrap_metrics(p, t, SK4, n=40, seed=3))
    assert not np.allclose(bootstrap_metrics(p, t, SK4, n=40, seed=3)['mean'], bootstrap_metrics(p, t, SK4, n=40, seed=4)['mean'])


def test_bootstrap_accum_metrics():
    p, t = fake_preds()
    ams = {'kappa': skm_to_fastai(skm.cohen_kappa_score, weights='quadratic'),
           'bacc': skm_to_fastai(skm.balanced_accuracy_score),
           'acc_t': AccumMetric(lambda pr, tg: (pr.argmax(-1) == tg).float().mean(), flatten=False),
           'auc': skm_to_fastai(skm.roc_auc_score, flatten=False, activation=ActivationType.Softmax, multi_class='ovr')}
    df = bootstrap_metrics(p, t, ams, n=25, seed=0)
    ref = ref_bootstrap(p, t, [QK, skm.balanced_accuracy_score, skm.accuracy_score], 25, 0)
    fct.test_close(df.loc[['kappa', 'bacc', 'acc_t'], 'mean'].values, ref.mean(1), eps=1e-6)
    rng = np.random.default_rng(0)
    groups = [np.flatnonzero(t == c) for c in np.unique(t)]
    idxs = (draw_resample(rng, len(t), groups) for _ in range(25))
    aucs = [skm.roc_auc_score(t[i], p[i], multi_class='ovr') for i in idxs]
    fct.test_close(df.loc['auc', 'mean'], np.mean(aucs), eps=1e-12)
    fct.test_close(df.loc['auc', 'point'], skm.roc_auc_score(t, p, multi_class='ovr'), eps=1e-12)


def test_bootstrap_plain_callable_fastai_order():
    p, t = fake_preds()
    seen = {}
    def f(pr, tg):
        seen['shapes'] = pr.shape, tg.shape
        return (pr.argmax(1) == tg).mean()
    df = bootstrap_metrics(p, t, f, n=10)
    fct.test_eq(seen['shapes'], (p.shape, t.shape))
    fct.test_eq(df.index.tolist(), ['f'])
    fct.test_close(df.loc['f', 'point'], (p.argmax(1) == t).mean())


def test_bootstrap_errors():
    p, t = fake_preds()
    fct.test_fail(lambda: bootstrap_metrics(p, t[:-1], SK4), contains='must be aligned')
    fct.test_fail(lambda: bootstrap_metrics(p, t, SK4, n=0), contains='integer >= 1')
    fct.test_fail(lambda: bootstrap_metrics(p, t, SK4, n=2.5), contains='integer >= 1')
    fct.test_fail(lambda: bootstrap_metrics(p, t, SK4, ci=1.5), contains='(0, 1)')
    fct.test_fail(lambda: bootstrap_metrics(p, t, {}), contains='No metrics')
    fct.test_fail(lambda: bootstrap_metrics(p, t.astype(float) + .5, SK4), contains='regression')


def test_bootstrap_warnings_summarised():
    "Resamples with an undefined metric give one summary warning, not one per resample"
    t = np.array([0] * 5 + [1])
    pr = np.zeros(6, dtype=int)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        bootstrap_metrics(pr, t, {'prec': functools.partial(skm.precision_score, average='macro')}, n=50, stratified=False)
    msgs = [str(x.message) for x in w]
    assert len(msgs) <= 3 and any('bootstrap resamples raised warnings' in m for m in msgs), msgs


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 5), st.integers(10, 80), st.integers(0, 10**6), st.booleans())
def test_bootstrap_property_fast_equals_sklearn(k, n_items, seed, stratified):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, k, n_items)
    pr = np.where(rng.random(n_items) < .5, t, rng.integers(0, k, n_items))
    fs = list(SK4.values()) + [skm.accuracy_score]
    df = bootstrap_metrics(pr, t, fs, n=15, seed=seed, stratified=stratified)
    ref = ref_bootstrap(pr, t, fs, 15, seed, stratified)
    np.testing.assert_allclose(df['mean'].values, ref.mean(1), rtol=0, atol=1e-12)
    ok = df['mean'].notna()  # a metric undefined in some resample (e.g. kappa of a constant resample) is NaN, as in sklearn
    assert (df['lo'][ok] <= df['mean'][ok] + 1e-12).all() and (df['mean'][ok] <= df['hi'][ok] + 1e-12).all()


def test_fmt_mean_std():
    p, t = fake_preds()
    df = bootstrap_metrics(p, t, SK4, n=20)
    s = fmt_mean_std(df)
    fct.test_eq(s['kappa'], f"{100 * df.loc['kappa', 'mean']:.2f} ± {100 * df.loc['kappa', 'std']:.2f}")
    s1 = fmt_mean_std(df, scale=1, digits=3, with_ci=True)
    fct.test_eq(s1['mcc'], f"{df.loc['mcc', 'mean']:.3f} ± {df.loc['mcc', 'std']:.3f} [{df.loc['mcc', 'lo']:.3f}, {df.loc['mcc', 'hi']:.3f}]")
    fct.test_fail(lambda: fmt_mean_std(df[['point']]), contains='bootstrap_metrics')


OWN = dict(quadratic_kappa=quadratic_kappa, mcc=mcc, balanced_accuracy=balanced_accuracy, macro_f1=macro_f1)

@pytest.mark.parametrize('case', ['random', 'middle_class_absent', 'never_predicted', 'constant_preds'])
def test_bootstrap_own_metrics_take_the_fast_path_with_the_same_values(case):
    "This package's metrics, plain or as fastai metrics, are bootstrapped on confusion matrices: same values as one call per resample"
    rng = np.random.default_rng(1)
    t = rng.integers(0, 5, 300)
    probs = torch.softmax(torch.randn(300, 5) + 2 * F.one_hot(torch.as_tensor(t), 5) * (rng.random(300) < .5)[:, None], 1)
    if case == 'middle_class_absent':  # grade 2 neither true nor predicted: kappa's quadratic weights must keep it
        t = np.where(t == 2, 3, t); probs[:, 2] = 0
    if case == 'never_predicted': probs[:, 4] = 0
    if case == 'constant_preds': probs = torch.zeros(300, 5).index_fill_(1, torch.tensor([1]), 1.)
    slow = bootstrap_metrics(probs, t, {k: (lambda f: lambda p, y: f(p, y))(f) for k, f in OWN.items()}, n=200, seed=3)
    for metrics in (OWN, [QuadraticKappa(), MCC(), BalancedAccuracy(), MacroF1()]):
        fast = bootstrap_metrics(probs, t, metrics, n=200, seed=3)
        np.testing.assert_allclose(fast.values, slow.values, atol=1e-12)
    assert all(ev._Metric(k, f).own for k, f in OWN.items())  # it did take the fast path




# ---------------------------------------------------------------- closed form of the degenerate resamples
from fastai_bmx.bootstrap import resample_confusions, confusion_metric_values
from fastai_bmx.metrics import PAPER_METRICS
OWN_KINDS = {'quadratic_kappa': 'kappa_all', 'mcc': 'mcc', 'balanced_accuracy': 'bacc', 'macro_f1': 'f1_macro', 'accuracy': 'acc'}
SK_KINDS = {'kappa_None': skm.cohen_kappa_score, 'kappa_linear': functools.partial(skm.cohen_kappa_score, weights='linear'),
            'kappa_quadratic': QK, 'mcc': skm.matthews_corrcoef, 'bacc': skm.balanced_accuracy_score, 'f1_macro': MF1,
            'acc': skm.accuracy_score}

def check_closed_form(t, p, k):
    "Every vectorised kind on the confusion matrix of `(t, p)` over k class codes equals the package's metric and sklearn's, warnings included"
    t, p = np.asarray(t), np.asarray(p)
    cm = resample_confusions(t, p, np.arange(len(t))[None], k)
    funcs = {m.name: m.func for m in PAPER_METRICS}
    for name, kind in OWN_KINDS.items():
        v = confusion_metric_values(kind, cm)[0][0]
        if np.isnan(v): v = 0.  # kappa's 0/0: the package metric's `undefined`, which bootstrap and paired take from one call
        np.testing.assert_allclose(v, funcs[name](p, t), rtol=0, atol=1e-12, err_msg=f'{name} t={t} p={p}')
    for kind, f in SK_KINDS.items():
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            ref = f(t, p)
        v, warned = confusion_metric_values(kind, cm)
        np.testing.assert_allclose(v[0], ref, rtol=0, atol=1e-12, err_msg=f'{kind} t={t} p={p}')  # NaN where sklearn gives NaN
        assert warned[0] == bool(w), (kind, t, p, [str(x.message) for x in w])

@pytest.mark.parametrize('t, p, k', [
    ([0, 1, 1, 2, 2, 2], [1] * 6, 3),                     # one class predicted: MCC's denominator is 0
    ([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 1, 0], 3),          # a class never predicted
    ([0, 0, 2, 2, 2, 0], [0, 1, 2, 2, 1, 0], 3),          # a class absent from the targets, predicted
    ([0, 0, 3, 3, 3, 5], [0, 3, 3, 3, 5, 5], 7),          # k classes with gaps: 1, 2, 4 and 6 neither true nor predicted
    ([1, 1, 1], [1, 1, 1], 4),                            # one class, true and predicted: kappa 0/0, a single label
    ([0, 1, 1, 0], [1, 0, 0, 1], 2),                      # 2 classes, all wrong
    ([0, 1], [1, 1], 2)])
def test_closed_form_on_degenerate_cases(t, p, k): check_closed_form(t, p, k)

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_closed_form_property(data):
    "Targets and predictions each drawn from their own subset of k classes (one class, gaps, classes never predicted or never true)"
    k = data.draw(st.integers(2, 7), 'k')
    tc = data.draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=k, unique=True), 'target classes')
    pc = data.draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=k, unique=True), 'predicted classes')
    n = data.draw(st.integers(1, 30), 'items')
    t = data.draw(st.lists(st.sampled_from(tc), min_size=n, max_size=n), 't')
    p = data.draw(st.lists(st.sampled_from(pc), min_size=n, max_size=n), 'p')
    check_closed_form(t, p, k)

def test_bootstrap_degenerate_resamples_need_no_call_per_resample(monkeypatch):
    "A model that predicts one class: every resample is degenerate, yet no metric is called once per resample, and the values are the metric's"
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 4, 200), np.full(200, 2)
    slow = bootstrap_metrics(p, t, {k: (lambda f: lambda q, y: f(q, y))(f) for k, f in OWN.items()}, n=100, seed=1)
    calls = []
    for name in ('matthews_corrcoef', 'balanced_accuracy_score', 'f1_score', 'cohen_kappa_score'):
        monkeypatch.setattr(skm, name, (lambda f: lambda *a, **kw: calls.append(f) or f(*a, **kw))(getattr(skm, name)))
    fast = bootstrap_metrics(p, t, OWN, n=100, seed=1)
    assert len(calls) == len(OWN), calls  # the point estimates only
    np.testing.assert_allclose(fast.values, slow.values, atol=1e-12)
    t1 = np.zeros(50, int)  # one class, true and predicted: kappa 0/0 in every resample, `undefined` from one call
    calls.clear()
    df = bootstrap_metrics(t1, t1, {'k0': quadratic_kappa, 'k1': functools.partial(quadratic_kappa, undefined=1.)}, n=30)
    fct.test_eq(df['mean'].tolist(), [0., 1.]); assert len(calls) <= 4
    with warnings.catch_warnings(record=True) as w:  # sklearn's own kappa warns there: summarised as before
        warnings.simplefilter('always')
        assert bootstrap_metrics(t1, t1, {'kappa': QK}, n=30)['mean'].isna().all()
    assert any('30 of 30 bootstrap resamples raised warnings' in str(x.message) for x in w)
