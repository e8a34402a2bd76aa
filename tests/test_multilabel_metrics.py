"Tests of fastai_bmx.multilabel_metrics and fastai_bmx.multilabel_bootstrap: equal to scikit-learn, ties included"
import warnings
import numpy as np, pandas as pd, pytest, torch
import sklearn.metrics as skm
from hypothesis import given, settings, strategies as st
from torch import nn
from fastai.data.block import DataBlock, TransformBlock, MultiCategoryBlock
from fastai.data.transforms import IndexSplitter
from fastai.learner import Learner
from fastai.metrics import AccumMetric, ActivationType
from fastai.callback.progress import *  # Learner.no_bar
from fastai_bmx.bootstrap import draw_resample
from fastai_bmx.multilabel_metrics import *
from fastai_bmx.multilabel_bootstrap import *

FUNCS = {'macro_ap': lambda p, t: macro_ap(p, t).value, 'micro_ap': micro_ap,
         'macro_auroc': lambda p, t: macro_auroc(p, t).value}


def long_tail(n=60, rates=(.4, .2, .1, .05, .02), seed=0, levels=10):
    "Multi-hot targets with falling positive rates, and scores on `levels` values (ties) that favour positives"
    g = np.random.default_rng(seed)
    t = (g.random((n, len(rates))) < rates).astype(int)
    p = np.round(np.clip(g.normal(.3 + .3 * t, .2), 0, 1) * (levels - 1)) / (levels - 1)
    return p, t


def slow(p, t, metric, n, seed, stratify=True):
    "The metric on each resample, drawn by `draw_resample` and scored by the scikit-learn-based functions"
    r, groups = np.random.default_rng(seed), rarest_finding_strata(t) if stratify else None
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return np.array([FUNCS[metric](p[i], t[i]) for i in (draw_resample(r, len(t), groups) for _ in range(n))])


# ------------------------------------------------------------ input checks: one line, saying what to pass
@pytest.mark.parametrize('probs, targs, msg', [
    (np.zeros((3, 2)), np.zeros((3, 3)), 'one score per image and finding'),
    (np.zeros((3, 2)), np.zeros(3), 'pass multi-hot targets (N, C)'),
    (np.zeros((2, 2)), [[0, 2], [1, 0]], 'other than 0 and 1 (e.g. 2)'),
    (np.zeros((2, 2)), [[0, .5], [1, 0]], 'other than 0 and 1 (e.g. 0.5)'),
    (np.zeros((2, 2)), [[0, np.nan], [1, 0]], 'other than 0 and 1'),
    ([[np.nan, 0.], [0., 1.]], [[0, 1], [1, 0]], '1 NaN or infinite'),
    ([[np.inf, 0.], [0., 1.]], [[0, 1], [1, 0]], '1 NaN or infinite'),
    ([['a', 'b'], ['c', 'd']], [[0, 1], [1, 0]], 'numeric scores'),
])
@pytest.mark.parametrize('func', [per_finding_ap, per_finding_auroc, macro_ap, micro_ap, macro_auroc, macro_f1_at,
                                  tune_thresholds])
def test_bad_input_one_line_error(func, probs, targs, msg):
    with pytest.raises(ValueError) as e: func(probs, targs)
    assert msg in str(e.value) and '\n' not in str(e.value), str(e.value)


def test_bad_arguments():
    p, t = long_tail()
    for f, msg in [(lambda: per_finding_f1(p, t, [.5, .5]), 'one per finding (5)'),
                   (lambda: per_finding_f1(p, t, [np.nan] * 5), 'NaN'),
                   (lambda: group_scores(p, t, [1, 2, 3]), 'train_counts has 3 findings but targs 5'),
                   (lambda: finding_groups([5, -1]), '1-D array >= 0'),
                   (lambda: finding_groups([5, 1], head=10, tail=20), '0 <= tail <= head'),
                   (lambda: bootstrap_findings(p, t, 'ap'), "one of ('macro_ap'"),
                   (lambda: bootstrap_findings(p, t, n=0), 'integer >= 1'),
                   (lambda: bootstrap_findings(p, t, ci=95), 'in (0, 1)'),
                   (lambda: bootstrap_findings_paired(p, p[:, :4], t), 'one score per image and finding'),
                   (lambda: resample_scores(p, t, np.ones((2, 7))), 'one per image (60)'),
                   (lambda: bootstrap_findings(p, np.zeros_like(t)), 'nothing to bootstrap')]:
        with pytest.raises(ValueError) as e: f()
        assert msg in str(e.value) and '\n' not in str(e.value), str(e.value)


def test_tensors_and_float_targets():
    p, t = long_tail()
    got = macro_ap(torch.tensor(p, dtype=torch.float32), torch.tensor(t, dtype=torch.float32))
    assert got == macro_ap(p.astype(np.float32), t)


# ------------------------------------------------------------ equal to scikit-learn
@st.composite
def multilabel(draw, max_n=25, max_c=4):
    "Small multi-hot targets and scores on a few levels (many ties), findings without positives or negatives allowed"
    n, c = draw(st.integers(1, max_n)), draw(st.integers(1, max_c))
    t = np.array(draw(st.lists(st.lists(st.integers(0, 1), min_size=c, max_size=c), min_size=n, max_size=n)))
    levels = draw(st.integers(1, 6))
    p = np.array(draw(st.lists(st.lists(st.integers(0, levels - 1), min_size=c, max_size=c), min_size=n,
                               max_size=n))) / levels
    return p, t


@settings(max_examples=60, deadline=None)
@given(multilabel())
def test_per_finding_equal_sklearn(pt):
    p, t = pt
    ap, auc = per_finding_ap(p, t), per_finding_auroc(p, t)
    for k in range(t.shape[1]):
        pos = t[:, k].sum()
        if pos: assert ap[k] == pytest.approx(skm.average_precision_score(t[:, k], p[:, k]), abs=1e-12)
        else: assert np.isnan(ap[k])
        if 0 < pos < len(t): assert auc[k] == pytest.approx(skm.roc_auc_score(t[:, k], p[:, k]), abs=1e-12)
        else: assert np.isnan(auc[k])


@settings(max_examples=60, deadline=None)
@given(multilabel())
def test_means_equal_sklearn_over_the_scored(pt):
    p, t = pt
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        m, a = macro_ap(p, t), macro_auroc(p, t)
    has_pos, has_both = t.sum(0) > 0, (t.sum(0) > 0) & (t.sum(0) < len(t))
    assert (m.n_scored, m.n_left_out) == (has_pos.sum(), (~has_pos).sum())
    assert (a.n_scored, a.n_left_out) == (has_both.sum(), (~has_both).sum())
    if has_pos.any():
        ref = skm.average_precision_score(t[:, has_pos], p[:, has_pos], average='macro')
        assert m.value == pytest.approx(ref, abs=1e-12)
        assert micro_ap(p, t) == pytest.approx(skm.average_precision_score(t, p, average='micro'), abs=1e-12)
    else: assert np.isnan(m.value) and np.isnan(micro_ap(p, t))
    if has_both.any():
        ref = np.mean([skm.roc_auc_score(t[:, k], p[:, k]) for k in np.flatnonzero(has_both)])
        assert a.value == pytest.approx(ref, abs=1e-12)
    else: assert np.isnan(a.value)


def test_all_scorable_equals_sklearn_macro():
    p, t = long_tail(n=200)
    assert (t.sum(0) > 0).all() and (t.sum(0) < len(t)).all()
    assert macro_ap(p, t).value == pytest.approx(skm.average_precision_score(t, p, average='macro'), abs=1e-12)
    assert macro_auroc(p, t).value == pytest.approx(skm.roc_auc_score(t, p, average='macro'), abs=1e-12)
    assert macro_ap(p, t).n_left_out == 0


# ------------------------------------------------------------ findings without positives or negatives
def test_left_out_findings_counted_and_described():
    p, t = long_tail()
    t[:, 3] = 0; t[:, 4] = 1  # no positive; no negative
    m, a = macro_ap(p, t), macro_auroc(p, t)
    assert (m.n_scored, m.n_left_out) == (4, 1) and (a.n_scored, a.n_left_out) == (3, 2)
    assert m.value == pytest.approx(np.nanmean(per_finding_ap(p, t)))
    assert m.describe('macro mAP') == f'macro mAP {m.value:.2f} over 4 findings (1 without a test positive left out)'
    want = '(2 without a validation positive or negative left out)'
    assert a.describe('macro AUROC', split='validation').endswith(want)
    full = macro_ap(p[:, :3], t[:, :3])
    assert full.describe('macro mAP', digits=3) == f'macro mAP {full.value:.3f} over 3 findings'


def test_no_scorable_finding_is_nan_and_says_so():
    p, t = long_tail()
    with pytest.warns(UserWarning, match='mean is NaN'): m = macro_ap(p, np.zeros_like(t))
    assert np.isnan(m.value) and (m.n_scored, m.n_left_out) == (0, 5)
    assert 'none of the 5 findings has a test positive' in m.describe('macro mAP')
    with pytest.warns(UserWarning): a = macro_auroc(p, np.ones_like(t))
    assert np.isnan(a.value) and a.n_left_out == 5
    assert np.isnan(micro_ap(p, np.zeros_like(t)))


# ------------------------------------------------------------ thresholds and F1
@settings(max_examples=60, deadline=None)
@given(multilabel())
def test_f1_equals_sklearn_and_tuned_thresholds_reach_the_best(pt):
    p, t = pt
    th = tune_thresholds(p, t)
    f1 = per_finding_f1(p, t, th)
    for k in range(t.shape[1]):
        if not t[:, k].any():
            assert th[k] == .5 and np.isnan(f1[k])
            continue
        assert f1[k] == pytest.approx(skm.f1_score(t[:, k], p[:, k] >= th[k]), abs=1e-12)
        best = max(skm.f1_score(t[:, k], p[:, k] >= s) for s in np.unique(p[:, k]))
        assert f1[k] == pytest.approx(best, abs=1e-12)
        called = p[:, k] >= th[k]  # a margin: the threshold lies strictly between the called and the not called
        if (~called).any(): assert p[~called, k].max() < th[k]


def test_tuned_threshold_midpoint_default_and_macro():
    p = np.array([[.9, .2], [.8, .1], [.4, .3], [.1, .3]])
    t = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    th = tune_thresholds(p, t, default=.7)
    assert th[0] == pytest.approx(.6) and th[1] == .7  # midway between .8 (called) and .4; no positive: the default
    m = macro_f1_at(p, t, th)
    assert (m.value, m.n_scored, m.n_left_out) == (1.0, 1, 1)
    assert per_finding_f1(p, t, .5)[0] == 1.0 and np.isnan(per_finding_f1(p, t)[1])


# ------------------------------------------------------------ groups
def test_finding_groups_cut_offs():
    assert list(finding_groups([1000, 100, 99, 20, 19, 0])) == ['head', 'head', 'medium', 'medium', 'tail', 'tail']
    assert list(finding_groups(np.array([10, 5, 1]), head=10, tail=5)) == ['head', 'medium', 'tail']
    assert GROUPS == ('head', 'medium', 'tail')


def test_group_scores_per_group():
    p, t = long_tail(n=80, rates=(.4, .3, .2, .1, .05, .03))
    t[:, 5] = 0  # a tail finding without a test positive
    counts = np.array([500, 150, 60, 25, 10, 3])
    th = tune_thresholds(p, t)
    df = group_scores(p, t, counts, thresholds=th)
    assert list(df.index) == ['head', 'medium', 'tail', 'all']
    assert list(df.columns) == ['n_findings', 'n_scored', 'n_scored_auroc', 'macro_ap', 'macro_auroc', 'macro_f1']
    assert df['n_findings'].tolist() == [2, 2, 2, 6] and df['n_scored'].tolist() == [2, 2, 1, 5]
    for name, cols in [('head', [0, 1]), ('medium', [2, 3]), ('tail', [4]), ('all', [0, 1, 2, 3, 4])]:
        row = df.loc[name]
        assert row.macro_ap == pytest.approx(macro_ap(p[:, cols], t[:, cols]).value, abs=1e-12)
        assert row.macro_auroc == pytest.approx(macro_auroc(p[:, cols], t[:, cols]).value, abs=1e-12)
        assert row.macro_f1 == pytest.approx(macro_f1_at(p[:, cols], t[:, cols], th[cols]).value, abs=1e-12)


def test_group_without_findings_or_scores_is_nan():
    p, t = long_tail()
    t[:, 4] = 0
    df = group_scores(p, t, [500, 400, 300, 200, 5])  # no medium finding; the only tail one has no positive
    assert df.loc['medium', 'n_findings'] == 0 and df.loc['tail', ['n_findings', 'n_scored']].tolist() == [1, 0]
    assert df.loc[['medium', 'tail'], ['macro_ap', 'macro_auroc', 'macro_f1']].isna().all().all()
    assert not df.loc[['head', 'all']].isna().any().any()


# ------------------------------------------------------------ fastai metrics in a real Learner
def multilabel_learner(metrics, seed=0):
    "A tiny Learner on 4-vectors with three findings from fastai's MultiCategoryBlock; no validation positive for 'c'"
    g = np.random.default_rng(seed)
    y = (g.random((80, 3)) < [.5, .2, .1]).astype(int); y[40:, 2] = 0
    x = (g.normal(size=(80, 4)) + np.c_[y, y[:, :1]]).astype(np.float32)
    dblock = DataBlock(blocks=(TransformBlock, MultiCategoryBlock(encoded=True, vocab=['a', 'b', 'c'])),
                       get_x=lambda i: torch.tensor(x[i]), get_y=lambda i: list(y[i]),
                       splitter=IndexSplitter(range(40, 80)))
    torch.manual_seed(seed)
    return Learner(dblock.dataloaders(range(80), bs=16, device='cpu'), nn.Linear(4, 3), metrics=metrics)


def test_fastai_metrics_equal_the_functions_on_get_preds():
    ms = [MacroAP(), MicroAP(), MacroAUROC()]
    assert all(isinstance(m, AccumMetric) and not m.flatten for m in ms)
    assert [m.name for m in ms] == ['macro_ap', 'micro_ap', 'macro_auroc']
    learn = multilabel_learner(ms)
    with learn.no_bar():
        learn.fit(2, 1e-2)
        _, *recorded = learn.validate()
        preds, targs = learn.get_preds()
    assert ((preds >= 0) & (preds <= 1)).all()  # get_preds gives sigmoid scores, as the metrics see them
    want = [macro_ap(preds, targs).value, micro_ap(preds, targs), macro_auroc(preds, targs).value]
    assert recorded == pytest.approx(want, abs=1e-7)
    assert macro_ap(preds, targs).n_left_out == 1  # 'c' without a validation positive
    assert list(learn.recorder.values[-1][-3:]) == pytest.approx(want, abs=1e-7)  # what training recorded: the same


def test_metrics_without_sigmoid_take_probabilities():
    p, t = long_tail()
    assert [m.activation for m in (MacroAP(), MicroAP(), MacroAUROC())] == [ActivationType.Sigmoid] * 3
    assert MacroAP(sigmoid=False).activation == ActivationType.No
    assert MacroAP(sigmoid=False)(torch.tensor(p), torch.tensor(t)) == pytest.approx(macro_ap(p, t).value, abs=1e-12)
    assert MicroAP(sigmoid=False)(torch.tensor(p), torch.tensor(t)) == pytest.approx(micro_ap(p, t), abs=1e-12)


# ------------------------------------------------------------ bootstrap over images
def test_rarest_finding_strata():
    p, t = long_tail(n=100)
    strata = rarest_finding_strata(t)
    assert sorted(np.concatenate(strata)) == list(range(100))
    counts = t.sum(0)
    for s in strata:
        if not t[s[0]].any(): assert not t[s].any(); continue  # the images without a finding, together
        k = np.argmin(np.where(t[s[0]] == 1, counts, 10**9))
        for i in s:  # every image of the stratum: k is its rarest positive finding (the first of equally rare)
            assert t[i, k] == 1 and k == np.argmin(np.where(t[i] == 1, counts, 10**9))


def test_draw_counts_are_draw_resample():
    p, t = long_tail()
    strata = rarest_finding_strata(t)
    w = draw_counts(np.random.default_rng(3), len(t), 5, strata)
    r = np.random.default_rng(3)
    assert (w == [np.bincount(draw_resample(r, len(t), strata), minlength=len(t)) for _ in range(5)]).all()
    for s in strata: assert (w[:, s].sum(1) == len(s)).all()  # each stratum keeps its size
    assert draw_counts(np.random.default_rng(0), 7, 4).sum(1).tolist() == [7] * 4


@settings(max_examples=40, deadline=None)
@given(multilabel(), st.integers(0, 2**16))
def test_resample_scores_equal_sklearn_on_repeated_images(pt, seed):
    p, t = pt
    w = np.random.default_rng(seed).integers(0, 4, (3, len(t)))  # multiplicities, zeros included
    ap, auc = resample_scores(p, t, w), resample_scores(p, t, w, auroc=True)
    for b in range(3):
        pb, tb = np.repeat(p, w[b], 0), np.repeat(t, w[b], 0)
        for k in range(t.shape[1]):
            pos = tb[:, k].sum()
            if pos: assert ap[b, k] == pytest.approx(skm.average_precision_score(tb[:, k], pb[:, k]), abs=1e-12)
            else: assert np.isnan(ap[b, k])
            if 0 < pos < len(tb): assert auc[b, k] == pytest.approx(skm.roc_auc_score(tb[:, k], pb[:, k]), abs=1e-12)
            else: assert np.isnan(auc[b, k])


@pytest.mark.parametrize('stratify', [True, False])
@pytest.mark.parametrize('metric', ['macro_ap', 'micro_ap', 'macro_auroc'])
def test_bootstrap_equals_slow_computation(metric, stratify):
    p, t = long_tail(n=50)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # an unstratified resample may leave every finding out of an AUROC
        res = bootstrap_findings(p, t, metric, n=25, seed=7, stratify=stratify)
    ref = slow(p, t, metric, 25, 7, stratify)
    ref = ref[~np.isnan(ref)]
    assert res.point == pytest.approx(FUNCS[metric](p, t), abs=1e-12)
    assert [res.mean, res.std, res.lo, res.hi] == pytest.approx(
        [ref.mean(), ref.std(ddof=1), *np.quantile(ref, [.025, .975])], abs=1e-12)
    assert (res.metric, res.n) == (metric, 25)
    scored = {'macro_ap': macro_ap(p, t)[1:3], 'micro_ap': (5, 0), 'macro_auroc': macro_auroc(p, t)[1:3]}[metric]
    assert (res.n_scored, res.n_left_out) == scored


def test_bootstrap_left_out_findings_and_determinism():
    p, t = long_tail(n=50)
    t[:, 4] = 0
    a = bootstrap_findings(p, t, n=40, seed=1)
    assert (a.n_scored, a.n_left_out) == (4, 1) and a == bootstrap_findings(p, t, n=40, seed=1)
    assert a != bootstrap_findings(p, t, n=40, seed=2)
    assert a.lo <= a.mean <= a.hi and a.point == pytest.approx(macro_ap(p, t).value, abs=1e-12)


@pytest.mark.parametrize('metric', ['macro_ap', 'micro_ap', 'macro_auroc'])
def test_paired_bootstrap_is_the_difference_on_the_same_images(metric):
    pa, t = long_tail(n=50)
    pb = np.round(np.clip(pa + np.random.default_rng(1).normal(0, .15, pa.shape), 0, 1), 1)
    d = bootstrap_findings_paired(pa, pb, t, metric, n=20, seed=4)
    ref = slow(pa, t, metric, 20, 4) - slow(pb, t, metric, 20, 4)
    assert d.metric == f'{metric}: a - b'
    assert d.point == pytest.approx(FUNCS[metric](pa, t) - FUNCS[metric](pb, t), abs=1e-12)
    assert [d.mean, d.std, d.lo, d.hi] == pytest.approx(
        [ref.mean(), ref.std(ddof=1), *np.quantile(ref, [.025, .975])], abs=1e-12)
    same = bootstrap_findings_paired(pa, pa, t, metric, n=20, seed=4)
    assert (same.point, same.mean, same.std, same.lo, same.hi) == (0, 0, 0, 0, 0)


def test_bootstrap_many_resamples_in_chunks():
    "More resamples than one chunk holds: the same values as the slow way, resample for resample"
    p, t = long_tail(n=400, rates=(.3, .1, .02) * 20, seed=2)  # 60 findings: chunks of 6 resamples
    res = bootstrap_findings(p, t, 'macro_auroc', n=13, seed=0)
    ref = slow(p, t, 'macro_auroc', 13, 0)
    assert [res.mean, res.std] == pytest.approx([ref.mean(), ref.std(ddof=1)], abs=1e-12)
