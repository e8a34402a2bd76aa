"Tests of fastai_bmx.evaluation: flip TTA, stratified bootstrap, per-class report, stratified k-fold, paper recipe"
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
from fastai_bmx.evaluation import _draw
import fastai_bmx.evaluation as ev
from fastai_bmx.metrics import quadratic_kappa, mcc, balanced_accuracy, macro_f1, QuadraticKappa, MCC, BalancedAccuracy, MacroF1

QK = functools.partial(skm.cohen_kappa_score, weights='quadratic')
MF1 = functools.partial(skm.f1_score, average='macro')
SK4 = {'kappa': QK, 'mcc': skm.matthews_corrcoef, 'bacc': skm.balanced_accuracy_score, 'f1': MF1}


def toy_learner(model, n=20, seed=0, bs=6, loss_func=None):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 2, 3, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    ds = list(zip(x, y))
    dls = DataLoaders.from_dsets(ds, ds, bs=bs, device='cpu')
    return Learner(dls, model, loss_func=loss_func or CrossEntropyLossFlat()), x, y


def fake_preds(n=300, k=4, acc=0.6, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.choice(k, n, p=np.linspace(2, 1, k) / np.linspace(2, 1, k).sum())
    t[0] = k  # a class with one item
    hit = np.where(rng.random(n) < acc, t, rng.integers(0, k + 1, n))
    logits = rng.normal(size=(n, k + 1)) + 2.5 * np.eye(k + 1)[hit]
    return torch.softmax(torch.tensor(logits), 1).numpy(), t


def ref_bootstrap(p, t, fs, n, seed, stratified=True):
    "Independent reference: same resample stream, every metric called by sklearn on every resample"
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(t == c) for c in np.unique(t)] if stratified else None
    lab = p.argmax(1) if p.ndim == 2 else p
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return np.array([[f(t[i], lab[i]) for f in fs] for i in (_draw(rng, len(t), groups) for _ in range(n))]).T


# ---------------------------------------------------------------- flip TTA
def test_flip_tta_invariant_model_equals_get_preds():
    torch.manual_seed(0)
    learn, x, y = toy_learner(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)))
    with learn.no_bar():
        probs, targs = flip_tta(learn, flips=['h', 'v', 'hv'])
        plain, _ = learn.get_preds()
    fct.test_close(probs, plain, eps=1e-6)
    fct.test_close(probs.sum(1), torch.ones(len(x)), eps=1e-6)
    fct.test_eq(targs, y)


@pytest.mark.parametrize('flips,dims', [('h', [(-1,)]), ('v', [(-2,)]), (['h', 'hv'], [(-1,), (-2, -1)])])
def test_flip_tta_sensitive_model_is_hand_average(flips, dims):
    torch.manual_seed(1)
    learn, x, y = toy_learner(nn.Sequential(nn.Flatten(), nn.Linear(24, 3)))
    with learn.no_bar(): probs, targs, passes = flip_tta(learn, flips=flips, with_passes=True)
    with torch.no_grad():
        hand = [F.softmax(learn.model(x), -1)] + [F.softmax(learn.model(x.flip(d)), -1) for d in dims]
    fct.test_close(probs, torch.stack(hand).mean(0), eps=1e-6)
    fct.test_eq(passes.shape, (1 + len(dims), len(x), 3))
    assert (passes[0] - passes[1]).abs().max() > 1e-3  # really flip-sensitive, so the check above means something


def test_flip_tta_leaves_state_unchanged():
    torch.manual_seed(0)
    learn, x, y = toy_learner(nn.Sequential(nn.Flatten(), nn.Linear(24, 3)))
    for training in [True, False]:
        learn.model.train(training)
        cbs = [type(c) for c in learn.cbs]
        valid = learn.dls.valid
        state = (valid.shuffle, valid.drop_last, valid.bs, len(valid.after_batch.fs))
        with learn.no_bar(): flip_tta(learn, flips=['h', 'v'])
        assert learn.model.training == training
        fct.test_eq([type(c) for c in learn.cbs], cbs)
        assert learn.dls.valid is valid
        fct.test_eq((valid.shuffle, valid.drop_last, valid.bs, len(valid.after_batch.fs)), state)


def test_flip_tta_dl_argument_and_plain_torch_loss():
    "A given dl (shuffled, drop_last) gives predictions in dataset order; a loss without activation falls back to softmax"
    torch.manual_seed(0)
    learn, x, y = toy_learner(nn.Sequential(nn.Flatten(), nn.Linear(24, 3)), loss_func=nn.CrossEntropyLoss())
    dl = learn.dls.valid.new(shuffle=True, drop_last=True)
    with learn.no_bar(): probs, targs = flip_tta(learn, dl=dl)
    with torch.no_grad(): hand = (F.softmax(learn.model(x), -1) + F.softmax(learn.model(x.flip(-1)), -1)) / 2
    fct.test_close(probs, hand, eps=1e-6)
    fct.test_eq(targs, y)


def test_flip_tta_errors():
    fct.test_fail(lambda: flip_dims('x'), contains="use 'h' (horizontal)")
    ds = [(torch.arange(4), torch.tensor(0))] * 4  # integer token inputs: nothing to flip
    dls = DataLoaders.from_dsets(ds, ds, bs=2, device='cpu')
    learn = Learner(dls, nn.Sequential(nn.Embedding(4, 2), nn.Flatten(), nn.Linear(8, 2)), loss_func=CrossEntropyLossFlat())
    with learn.no_bar():
        with pytest.raises(TypeError, match='no float image-like input'): flip_tta(learn)


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
        i = _draw(rng, len(t), groups)
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
    dropped = sum((t[_draw(rng, len(t), None)] == 3).sum() == 0 for _ in range(100))
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
    aucs = [skm.roc_auc_score(t[i], p[i], multi_class='ovr') for i in (_draw(rng, len(t), groups) for _ in range(25))]
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
    assert (df['lo'] <= df['mean'] + 1e-12).all() and (df['mean'] <= df['hi'] + 1e-12).all()


def test_fmt_mean_std():
    p, t = fake_preds()
    df = bootstrap_metrics(p, t, SK4, n=20)
    s = fmt_mean_std(df)
    fct.test_eq(s['kappa'], f"{100 * df.loc['kappa', 'mean']:.2f} ± {100 * df.loc['kappa', 'std']:.2f}")
    s1 = fmt_mean_std(df, scale=1, digits=3, with_ci=True)
    fct.test_eq(s1['mcc'], f"{df.loc['mcc', 'mean']:.3f} ± {df.loc['mcc', 'std']:.3f} [{df.loc['mcc', 'lo']:.3f}, {df.loc['mcc', 'hi']:.3f}]")
    fct.test_fail(lambda: fmt_mean_std(df[['point']]), contains='bootstrap_metrics')


# ---------------------------------------------------------------- per-class report
@pytest.mark.parametrize('zd', [0.0, 1.0, np.nan])
def test_per_class_report_vs_sklearn(zd):
    t = np.array([0, 0, 1, 1, 2, 2, 2, 3, 3])
    pr = np.array([0, 1, 1, 1, 2, 0, 2, 2, 0])  # class 3 never predicted; class 4 nowhere
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        rep = per_class_report(pr, t, vocab=list('abcde'), zero_division=zd)
    ref = skm.precision_recall_fscore_support(t, pr, labels=range(5), zero_division=zd)
    fct.test_eq(rep.index.tolist(), list('abcde'))
    for col, r in zip(['precision', 'recall', 'f1', 'support'], ref):
        np.testing.assert_allclose(rep[col].values.astype(float), r.astype(float), rtol=0, atol=1e-12, equal_nan=True)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.integers(1, 60), st.integers(0, 10**6))
def test_per_class_report_property(k, n, seed):
    rng = np.random.default_rng(seed)
    probs = rng.random((n, k))
    t = rng.integers(0, k, n)
    rep = per_class_report(probs, t)
    ref = skm.precision_recall_fscore_support(t, probs.argmax(1), labels=range(k), zero_division=0.0)
    for col, r in zip(['precision', 'recall', 'f1', 'support'], ref): np.testing.assert_allclose(rep[col].values, r, atol=1e-12)


def test_per_class_report_errors():
    fct.test_fail(lambda: per_class_report([0, 1, 2], [0, 1], None), contains='must be aligned')
    fct.test_fail(lambda: per_class_report([0, 1, 2], [0, 1, 2], vocab=['a']), contains='one name per class')


# ---------------------------------------------------------------- stratified k-fold
@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(5, 40), min_size=2, max_size=5), st.integers(2, 5), st.integers(0, 1000))
def test_stratified_kfold_property(counts, k, seed):
    y = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(y)
    folds = stratified_kfold(y, k, seed)
    fct.test_eq(len(folds), k)
    fct.test_eq(np.sort(np.concatenate([va for _, va in folds])), np.arange(len(y)))
    for tr, va in folds:
        assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(y)
        assert (np.abs(np.bincount(y[va], minlength=len(counts)) - np.array(counts) / k) < 1).all()
    fct.test_eq([va.tolist() for _, va in stratified_kfold(y, k, seed)], [va.tolist() for _, va in folds])


def test_stratified_kfold_splitter_and_errors():
    y = np.repeat(np.arange(3), [20, 10, 5])
    folds = stratified_kfold(y, 5, seed=1)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, stratified_kfold(y, 5, seed=2)))
    _, va = kfold_splitter(y, 3, k=5, seed=1)(list(range(len(y))))
    fct.test_eq(list(va), folds[3][1].tolist())
    fct.test_fail(lambda: stratified_kfold(y, 1), contains='k >= 2')
    fct.test_fail(lambda: stratified_kfold(y[:3], 5), contains='only 3 items')
    fct.test_fail(lambda: kfold_splitter(y, 5, k=5), contains='0..4')


def test_fold_summary():
    rng = np.random.default_rng(0)
    res = pd.DataFrame(dict(method=np.repeat(['CE', 'BMX'], 5), fold=np.tile(range(5), 2),
                            mcc=rng.random(10), kappa=rng.random(10)))
    fs = fold_summary(res)
    fct.test_eq(list(fs.columns), ['mcc', 'kappa'])
    for m in ['CE', 'BMX']:
        v = 100 * res.loc[res.method == m, 'kappa'].values
        fct.test_eq(fs.loc[m, 'kappa'], f'{v.min():.2f} ← {np.median(v):.2f} → {v.max():.2f}')
    num = fold_summary(res, metrics=['mcc'], fmt=False, scale=1)
    fct.test_close(num.loc['BMX', ('mcc', 'median')], np.median(res.loc[res.method == 'BMX', 'mcc']))
    fct.test_fail(lambda: fold_summary(res, by='x'), contains="no column 'x'")


# ---------------------------------------------------------------- paper recipe
@pytest.mark.parametrize('cycle_mult', [1, 2])
def test_fit_paper_recipe(tmp_path, cycle_mult):
    torch.manual_seed(0)
    learn, x, y = toy_learner(nn.Sequential(nn.Flatten(), nn.Linear(24, 3)), n=48)
    learn.opt_func, learn.path = SGD, tmp_path
    with learn.no_bar(), learn.no_logging():
        fit_paper_recipe(learn, n_cycles=2, cycle_len=1, lr=0.5, cycle_mult=cycle_mult, comp=np.greater)
    n_ep = 2 if cycle_mult == 1 else 3
    vals = [v[1] for v in learn.recorder.values]
    fct.test_eq(len(vals), n_ep)
    lrs, n_it = np.array(learn.recorder.lrs), len(learn.dls.train)
    fct.test_close(lrs[[0, n_it]], [0.5, 0.5])  # restart after the first (1-epoch) cycle
    assert lrs[n_it - 1] < 0.1 and lrs[-1] < 0.1
    assert (tmp_path / 'models' / 'best_model.pth').exists()
    assert np.argmax(vals) != n_ep - 1
    with learn.no_bar(): fct.test_close(learn.validate()[0], max(vals), eps=1e-5)  # worst-as-best epoch was reloaded
    fct.test_fail(lambda: fit_paper_recipe(learn, n_cycles=0), contains='>= 1')


# ---------------------------------------------------------------- real data
def test_real_retinamnist_pipeline(real_data, tmp_path):
    d = np.load(real_data('retinamnist.npz'))
    x = torch.tensor(d['val_images'], dtype=torch.float32).permute(0, 3, 1, 2) / 255
    y = torch.tensor(d['val_labels'][:, 0], dtype=torch.long)
    ds = list(zip((x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True), y))
    dls = DataLoaders.from_dsets(ds, ds, bs=8, device='cpu')
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 13 * 13, 5))
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), opt_func=SGD, path=tmp_path)
    with learn.no_bar(), learn.no_logging(): fit_paper_recipe(learn, n_cycles=1, cycle_len=1)
    with learn.no_bar(): probs, targs, passes = flip_tta(learn, with_passes=True)
    fct.test_eq(targs, y)
    fct.test_close(probs, passes.mean(0))
    df = bootstrap_metrics(probs, targs, SK4, n=200)
    fct.test_close(df['point'].values, [f(y.numpy(), probs.argmax(1).numpy()) for f in SK4.values()], eps=1e-12)
    rep = per_class_report(probs, targs)
    fct.test_eq(rep['support'].values, np.bincount(y.numpy(), minlength=5))


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

