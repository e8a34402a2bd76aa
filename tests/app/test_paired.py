"Paired comparisons: differences against a hand computation, symmetry, the interval's formula, its verdicts and the report's table"
import math
import numpy as np, pandas as pd, pytest
from hypothesis import given, settings, strategies as st
from scipy import stats
import fastcore.test as fct
import sklearn.metrics as skm
from fastai_bmx.app.decide.paired import paired_differences, paired_interval, verdict, PAIRABLE
from fastai_bmx.app.report.results import paired_results, pick_reference
from fastai_bmx.app.run.store import RunFolder
from fastai_bmx.app.plan.sources import RunRecord


def runs(seed, n_seeds=3, n=300, k=4):
    rng = np.random.default_rng(seed)
    t = rng.choice(k, n, p=np.r_[.55, .25, .15, .05][:k] / np.r_[.55, .25, .15, .05][:k].sum())
    guess = lambda acc: np.where(rng.random(n) < acc, t, rng.integers(0, k, n))
    return [guess(.7) for _ in range(n_seeds)], [guess(.6) for _ in range(n_seeds)], t


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(PAIRABLE), st.integers(1, 4))
def test_differences_match_sklearn_and_are_antisymmetric(seed, metric, n_seeds):
    a, r, t = runs(seed, n_seeds)
    d, boot = paired_differences(a, r, t, metric, n=50, seed=seed)
    f = {'mcc': skm.matthews_corrcoef, 'balanced_accuracy': skm.balanced_accuracy_score, 'accuracy': skm.accuracy_score,
         'macro_f1': lambda t, p: skm.f1_score(t, p, average='macro', labels=np.arange(4), zero_division=0),
         'quadratic_kappa': lambda t, p: skm.cohen_kappa_score(t, p, weights='quadratic', labels=np.arange(4))}[metric]
    if metric != 'macro_f1':  # (macro-F1 over the classes present, as PAPER_METRICS defines it)
        fct.test_close(d, [f(t, x) - f(t, y) for x, y in zip(a, r)], eps=1e-9)
    d2, boot2 = paired_differences(r, a, t, metric, n=50, seed=seed)
    fct.test_close(d2, -d, eps=1e-12); fct.test_close(boot2, -boot, eps=1e-12)  # same resamples for both methods
    fct.test_eq(boot.shape, (50, n_seeds))


def test_interval_formula_by_hand():
    d = np.array([.03, .01, .05])
    boot = np.random.default_rng(0).normal(.03, .01, (2000, 3))
    ci = paired_interval(d, boot)
    v_seeds, v_items = d.var(ddof=1) / 3, boot.mean(1).var(ddof=1)
    se = math.sqrt(v_seeds + v_items)
    dof = se**4 * 2 / v_seeds**2
    fct.test_close(ci['se'], se); fct.test_close(ci['dof'], dof)
    fct.test_close(ci['hi'] - ci['diff'], stats.t.ppf(.975, dof) * se)
    fct.test_eq(verdict(ci['lo'], ci['hi']), 'better' if ci['lo'] > 0 else 'no evidence either way')


def test_verdicts():
    fct.test_eq(verdict(.01, .02), 'better'); fct.test_eq(verdict(-.02, -.01), 'worse'); fct.test_eq(verdict(-.01, .01), 'no evidence either way')
    fct.test_eq(verdict(-.02, -.01, seeds=1), 'worse (one seed: training noise not counted)')


def test_same_predictions_give_zero_and_a_real_gain_is_found():
    a, r, t = runs(1)
    same = paired_interval(*paired_differences(a, a, t, 'mcc'))
    fct.test_eq((same['diff'], same['lo'], same['hi']), (0., 0., 0.))
    better = paired_interval(*paired_differences([np.where(np.arange(len(t)) % 3 == 0, t, x) for x in r], r, t, 'mcc'))
    assert better['lo'] > 0


def test_report_table_pairs_by_seed_and_refuses_an_unknown_reference(tmp_path):
    folder = RunFolder(tmp_path)
    folder.save_record(RunRecord('toy', ('a', 'b', 'c', 'd'), (55, 25, 15, 5), ordinal=False, flip=False))
    a, r, t = runs(2)
    for s in range(3):
        folder.add_run(dict(run=f'instance_seed{s}', seed=s, fold=None, method='instance'), np.eye(4)[r[s]], t)
        if s < 2: folder.add_run(dict(run=f'bmx-0.2_seed{s}', seed=s, fold=None, method='bmx-0.2'), np.eye(4)[a[s]], t)
    pr = paired_results(folder, 'mcc')
    fct.test_eq(list(pr['method']), ['bmx-0.2']); fct.test_eq(int(pr['pairs'].iloc[0]), 2)  # only the seeds both ran
    fct.test_close(pr['mcc'].iloc[0], 100 * np.mean([skm.matthews_corrcoef(t, a[s]) - skm.matthews_corrcoef(t, r[s]) for s in range(2)]))
    fct.test_eq(pick_reference(['bmx-0.2', 'focal']), 'bmx-0.2')
    with pytest.raises(ValueError, match='not among the methods compared'): pick_reference(['instance'], 'cb')


@pytest.mark.parametrize('metric', PAIRABLE)
def test_degenerate_runs_in_closed_form_equal_the_metric(metric, monkeypatch):
    "A run that predicts one class, one that never predicts a class, targets with a gap: no call per resample, the metric's values"
    from fastai_bmx.bootstrap import draw_resample
    from fastai_bmx.metrics import PAPER_METRICS
    import fastai_bmx.metrics as fm
    rng = np.random.default_rng(3)
    t = rng.choice([0, 1, 3, 4], 120)  # class 2 never true
    runs_ = [np.full(120, 1), np.where(t == 4, 0, t), np.where(rng.random(120) < .5, t, 2), np.full(120, 3)]
    func = {m.name: m.func for m in PAPER_METRICS}[metric]
    groups, rng2 = [np.flatnonzero(t == c) for c in np.unique(t)], np.random.default_rng(7)
    idx = [np.arange(120)] + [draw_resample(rng2, 120, groups) for _ in range(40)]
    want = np.array([[func(a[i], t[i]) - func(r[i], t[i]) for a, r in zip(runs_[:2], runs_[2:])] for i in idx])
    calls = []
    monkeypatch.setattr(fm.skm, 'matthews_corrcoef', lambda *a, **kw: calls.append(a))
    d, boot = paired_differences(runs_[:2], runs_[2:], t, metric, n=40, seed=7)
    fct.test_eq(calls, [])
    np.testing.assert_allclose(np.r_[d[None], boot], want, rtol=0, atol=1e-12)


def test_one_class_everywhere_takes_kappas_undefined():
    t = np.zeros(30, int)
    d, boot = paired_differences([t], [t], t, 'quadratic_kappa', n=20)
    fct.test_eq((d.tolist(), np.abs(boot).max()), ([0.], 0.))
