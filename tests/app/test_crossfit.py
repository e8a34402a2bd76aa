"A tuned variant is scored on validation out of fold: each item decided by τ or a threshold tuned without it, so tuning doesn't flatter the settings the recommendation ranks"
import numpy as np, pytest
import fastcore.test as fct
from hypothesis import given, settings, strategies as st
from fastai_bmx.app.decide.posthoc import fit_posthoc, posthoc_predictions, crossfit_predictions
from fastai_bmx.app.decide.recommend import candidate_scores, fit_folder, recommend
from fastai_bmx.app.run.store import RunFolder
from fastai_bmx.app.plan.sources import RunRecord
from fastai_bmx.metrics import mcc

COUNTS = (300, 60, 20)  # a long-tailed training set: τ moves decisions towards the rare classes


def _noise(rng, n, k=3):
    "Validation items whose probabilities know nothing of their labels: every decision rule has an expected MCC of 0"
    return rng.dirichlet(np.ones(k), n), rng.choice(k, n, p=[.6, .25, .15][:k] if k == 3 else None)


def test_tuning_flatters_in_sample_and_not_out_of_fold():
    rng, in_sample, out_of_fold = np.random.default_rng(0), [], []
    for _ in range(40):
        p, t = _noise(rng, 80)
        plain = mcc(p.argmax(1), t)
        in_sample.append(mcc(posthoc_predictions(p, COUNTS, fit_posthoc(p, t, COUNTS, 'mcc'), 'post-hoc τ')[1], t) - plain)
        out_of_fold.append(mcc(crossfit_predictions(p, t, COUNTS, 'mcc', 'post-hoc τ'), t) - plain)
    in_sample, out_of_fold = np.array(in_sample), np.array(out_of_fold)
    assert (in_sample >= 0).all() and in_sample.mean() > 0.04  # τ = 0 is among those tried: in sample it never loses
    assert abs(out_of_fold.mean()) < 0.03 and (out_of_fold < 0).any()  # out of fold it wins and loses, by 0 on average


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(12, 90), fold=st.integers(0, 9), two=st.booleans())
def test_a_folds_decisions_never_see_its_own_labels(seed, n, fold, two):
    rng = np.random.default_rng(seed)
    k = 2 if two else 3
    p, t, counts = rng.dirichlet(np.ones(k), n), rng.integers(0, k, n), COUNTS[:k]
    folds = np.arange(n) % 10  # held fixed while the labels change
    held = folds == fold
    relabelled = np.where(held, rng.integers(0, k, n), t)
    for variant in ('post-hoc τ', 'threshold') if two else ('post-hoc τ',):
        a, b = (crossfit_predictions(p, y, counts, 'mcc', variant, folds) for y in (t, relabelled))
        fct.test_eq(a[held], b[held])


def _folder(path, seed=1, n=80):
    "Two methods, three seeds each, whose validation probabilities are noise"
    rng, folder = np.random.default_rng(seed), RunFolder(path)
    folder.save_record(RunRecord('toy', ('a', 'b', 'c'), COUNTS))
    t = rng.choice(3, n, p=[.6, .25, .15])
    for m in ('instance', 'sqrt'):
        for s in range(3):
            vp, tp = rng.dirichlet(np.ones(3), n), rng.dirichlet(np.ones(3), n)
            folder.add_run(dict(run=f'{m}_seed{s}', seed=s, fold=None, method=m, mcc=mcc(tp.argmax(1), t)), tp, t, valid_probs=vp, valid_targs=t)
    return folder


def test_candidates_are_ranked_on_scores_of_fits_that_never_saw_the_item(tmp_path):
    folder = _folder(tmp_path)
    fits = fit_folder(folder, 'mcc')
    cands = candidate_scores(folder, 'mcc', fits).set_index(['run', 'variant'])
    for run in fits:
        p, t = folder.preds(run, 'valid')
        fold = np.empty(len(t), int)
        for c in range(3): fold[np.flatnonzero(t == c)] = np.arange((t == c).sum()) % 10
        brute = np.empty(len(t), int)
        for k in range(10):  # fit_posthoc on the other nine folds, then deploy on fold k as the test set would be
            fit = fit_posthoc(p[fold != k], t[fold != k], COUNTS, 'mcc')
            brute[fold == k] = posthoc_predictions(p[fold == k], COUNTS, fit, 'post-hoc τ', calibrated=False)[1]
        fct.test_close(cands.loc[(run, 'post-hoc τ'), 'valid'], mcc(brute, t))
        fct.test_close(cands.loc[(run, 'plain'), 'valid'], mcc(p.argmax(1), t))
    r = recommend(folder, 'mcc', fits=fits)
    ranked = cands.reset_index().groupby(['method', 'variant']).valid.mean()
    fct.test_close(r.valid_mean, ranked.max())
    old = recommend(folder, 'mcc', fits=fits, out_of_fold=False)  # in sample, as the recommendation scored before
    def in_sample_score(run, variant):
        p, t = folder.preds(run, 'valid')
        return mcc(posthoc_predictions(p, COUNTS, fits[run], variant)[1], t)
    in_sample = {(m, v): np.mean([in_sample_score(f'{m}_seed{s}', v) for s in range(3)]) for m in ('instance', 'sqrt') for v in ('plain', 'post-hoc τ')}
    fct.test_close(old.valid_mean, max(in_sample.values()))
    assert old.variant == 'post-hoc τ' and max(in_sample.values()) > ranked.max()  # in sample, tuning flattered the tuned ones


def test_bad_arguments_are_refused():
    p, t = _noise(np.random.default_rng(0), 30)
    with pytest.raises(ValueError, match='folds=1'): crossfit_predictions(p, t, COUNTS, 'mcc', 'post-hoc τ', folds=1)
    with pytest.raises(ValueError, match="variant='tau'"): crossfit_predictions(p, t, COUNTS, 'mcc', 'tau')
    with pytest.raises(ValueError, match='two classes'): crossfit_predictions(p, t, COUNTS, 'mcc', 'threshold')
    with pytest.raises(ValueError, match='one fold per validation item'): crossfit_predictions(p, t, COUNTS, 'mcc', 'post-hoc τ', np.zeros(29))
