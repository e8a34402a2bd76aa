"What saved predictions become without retraining: the calibration measures, temperature scaling, the two-class threshold, the recommendation chosen on validation and the exported winner"
import json, subprocess, sys, zipfile
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import fastcore.test as fct
import sklearn.metrics as skm
from hypothesis import given, settings, strategies as st
from PIL import Image
from fastai_bmx.calibration import ece, classwise_ece, nll, brier, fit_temperature, temperature_scale, reliability
from fastai_bmx.metrics import auroc, rare_class_rates, run_scores, mcc, balanced_accuracy
from fastai_bmx.threshold import tune_threshold, threshold_preds, THRESHOLDS
from fastai_bmx.app.decide.posthoc import fit_posthoc, posthoc_predictions, VARIANTS
from fastai_bmx.app.decide.recommend import recommend, fit_folder, recommendation_lines
from fastai_bmx.app.report.posthoc_report import fill_run_scores
from fastai_bmx.app.run.store import RunFolder
from fastai_bmx.app.plan.sources import RunRecord

EXE = str(Path(sys.executable).parent/'bmx-compare')


# --- the measures, against scikit-learn and hand formulas ---------------------------------------------------------

@pytest.mark.parametrize('k', [2, 3, 7])
def test_measures_match_sklearn(k):
    rng = np.random.default_rng(k)
    p = rng.dirichlet(np.ones(k), 500); t = rng.integers(0, k, 500)
    fct.test_close(nll(p, t), skm.log_loss(t, p, labels=range(k)))
    fct.test_close(brier(p, t), skm.brier_score_loss(t, p if k > 2 else p[:, 1], labels=range(k) if k > 2 else None))
    want = skm.roc_auc_score(t, p[:, 1]) if k == 2 else skm.roc_auc_score(t, p, multi_class='ovr', average='macro')
    fct.test_close(auroc(p, t), want)


def test_ece_by_hand():
    "Six items, 15 bins: confidences 0.95 (right, wrong), 0.55 (right), 0.75 (right, right, wrong)"
    p = np.array([[.95, .05], [.05, .95], [.55, .45], [.75, .25], [.25, .75], [.75, .25]])
    t = np.array([0, 0, 0, 0, 1, 1])
    want = 2/6 * abs(.5 - .95) + 1/6 * abs(1 - .55) + 3/6 * abs(2/3 - .75)
    fct.test_close(ece(p, t), want)
    # classwise: class 0's probabilities .95 .05 .55 .75 .25 .75, class 1's their complements
    def gap(q, y):
        b = np.clip(np.ceil(q * 15).astype(int) - 1, 0, 14)
        return sum(abs(y[b == i].sum() - q[b == i].sum()) for i in np.unique(b)) / len(q)
    fct.test_close(classwise_ece(p, t), (gap(p[:, 0], (t == 0).astype(float)) + gap(p[:, 1], (t == 1).astype(float))) / 2)
    r = reliability(p, t)
    fct.test_eq(r['items'].sum(), 6)
    fct.test_close(r.set_index('items').loc[3, 'accuracy'], 2/3)


def test_bad_probabilities_are_refused():
    fct.test_fail(lambda: ece(np.array([[2., -1.]]), [0]), contains='apply softmax')
    fct.test_fail(lambda: nll(np.ones((3, 2)) / 2, [0, 1]), contains='one row per target')
    fct.test_fail(lambda: brier(np.ones(3) / 3, [0, 1, 2]), contains='(N, C)')


def test_rare_class_sensitivity_and_specificity():
    t = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1]); p = np.array([0, 0, 1, 1, 1, 1, 1, 1, 0, 1])
    fct.test_eq(rare_class_rates(p, t, positive=0), dict(sensitivity=2/3, specificity=6/7))
    s = run_scores(np.eye(2)[p] * .8 + .1, t, counts=[30, 70])
    fct.test_close([s['sensitivity'], s['specificity']], [2/3, 6/7])


# --- temperature scaling ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('factor', [0.5, 2., 4.])
def test_temperature_recovers_a_known_overconfidence(factor):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(8000, 4)) * 1.5
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=q) for q in p])
    warped = np.exp(factor * z); warped /= warped.sum(1, keepdims=True)
    T = fit_temperature(warped, y)
    fct.test_close(T, factor, eps=0.1 * factor)
    fct.test_eq(temperature_scale(warped, T).argmax(1), warped.argmax(1))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 20), st.integers(2, 6))
def test_temperature_never_changes_a_decision(seed, T, k):
    p = np.random.default_rng(seed).dirichlet(np.ones(k) * 0.5, 50)
    np.testing.assert_array_equal(temperature_scale(p, T).argmax(1), p.argmax(1))
    fct.test_close(temperature_scale(p, T).sum(1), np.ones(50))


# --- the threshold -----------------------------------------------------------------------------------------------

def test_the_tuned_threshold_maximises_the_metric_on_validation():
    rng = np.random.default_rng(2)
    t = (rng.random(500) < 0.15).astype(int)
    p1 = np.clip(np.where(t == 1, rng.normal(.35, .1, 500), rng.normal(.15, .08, 500)), 0, 1)
    p = np.stack([1 - p1, p1], 1)
    best, scores = tune_threshold(p, t, mcc)
    brute = {x: mcc(np.where(p1 >= x, 1, 0), t) for x in THRESHOLDS}
    fct.test_close(scores[best], max(brute.values()))
    assert best != 0.5 and scores[best] > scores[0.5]
    fct.test_eq(threshold_preds(p, best), (p1 >= best).astype(int))
    fct.test_fail(lambda: threshold_preds(np.ones((2, 3)) / 3, 0.5), contains='two-class')


# --- the recommendation, on a constructed folder where validation and test disagree -------------------------------

def _probs(t, right, k):
    n = len(t)
    pred = np.where(np.arange(n) < right, t, (t + 1) % k)
    p = np.full((n, k), 0.1 / (k - 1)); p[np.arange(n), pred] = 0.9
    return p

def _folder(path, scores, k=3, n=300):
    "Per method and seed (validation right, test right) items, or None for a seed not run: a folder whose accuracies are known exactly"
    Path(path).mkdir(parents=True, exist_ok=True)
    folder, t = RunFolder(path), np.arange(n) % k
    folder.save_record(RunRecord('toy', tuple('abcdefg'[:k]), (100,) * k))
    for m, per_seed in scores.items():
        for seed, scored in enumerate(per_seed):
            if scored is None: continue  # a seed this method has not recorded
            v, te = scored
            folder.add_run(dict(run=f'{m}_seed{seed}', seed=seed, fold=None, method=m, accuracy=te / n, valid_accuracy=v / n),
                           _probs(t, te, k), t, valid_probs=_probs(t, v, k), valid_targs=t)
    return folder


def test_the_recommendation_follows_validation_and_states_the_known_cost(tmp_path):
    folder = _folder(tmp_path, {'instance': [(150, 150), (154, 146), (152, 148)], 'sqrt': [(210, 160), (200, 170), (205, 165)],
                                'cb': [(170, 240), (160, 250), (165, 245)]})
    r = recommend(folder, 'accuracy')
    fct.test_eq((r.setting, r.test_best, r.runs), ('sqrt', 'cb', 3))
    fct.test_close(r.valid_mean, 205 / 300); fct.test_close(r.test_mean, 165 / 300)
    fct.test_close(r.cost['diff'], (165 - 245) / 300)  # the gap to the test-best, exactly
    assert r.cost['hi'] < 0
    fct.test_close(r.vs_reference['diff'], (165 - 148) / 300)
    fct.test_eq(r.median_run, 'sqrt_seed2')  # validation 210, 200, 205: the median is seed 2's
    line = recommendation_lines(r)[0]
    assert line.startswith('Recommended: sqrt (validation accuracy 68.33') and 'test accuracy 55.00' in line, line


def test_the_test_set_never_moves_the_recommendation(tmp_path):
    "Shuffling every run's test predictions changes the test scores, never the choice"
    scores = {'instance': [(150, 150), (150, 150)], 'sqrt': [(200, 100), (200, 100)], 'cb': [(180, 290), (180, 290)]}
    a = recommend(_folder(tmp_path/'a', scores), 'accuracy')
    flipped = {m: [(v, 300 - te) for v, te in s] for m, s in scores.items()}
    b = recommend(_folder(tmp_path/'b', flipped), 'accuracy')
    fct.test_eq((a.setting, b.setting), ('sqrt', 'sqrt'))
    assert a.test_mean != b.test_mean


def test_a_method_missing_a_seed_is_ranked_on_the_seeds_all_share(tmp_path):
    "A seed not yet run (or failed) never flatters a method: every setting is ranked on the seeds all methods have"
    scores = {'instance': [(150, 150)] * 3, 'sqrt': [(200, 160), (120, 160), (200, 160)], 'cb': [(190, 200)] * 3}
    fct.test_eq(recommend(_folder(tmp_path/'all', scores), 'accuracy').setting, 'cb')  # mean validation 190 against sqrt's 173
    r = recommend(_folder(tmp_path/'part', {**scores, 'cb': [(190, 200), None, (190, 200)]}), 'accuracy')
    fct.test_eq((r.setting, r.runs, r.left_out, r.shared), ('sqrt', 2, ('instance_seed1', 'sqrt_seed1'), True))
    fct.test_close(r.valid_mean, 200 / 300)  # seeds 0 and 2 only: sqrt 200 against cb 190
    fct.test_eq(recommendation_lines(r)[-1], 'Ranked on the seeds and folds every method has recorded; left out: instance_seed1, sqrt_seed1.')


def test_with_no_seed_in_common_each_setting_is_ranked_on_its_own_runs(tmp_path):
    r = recommend(_folder(tmp_path, {'instance': [(150, 150)], 'sqrt': [None, (200, 160)]}), 'accuracy')
    fct.test_eq((r.setting, r.runs, r.left_out, r.shared), ('sqrt', 1, (), False))
    assert recommendation_lines(r)[-1].startswith('No seed or fold is recorded for every method'), recommendation_lines(r)


def test_the_reliability_title_counts_the_pooled_runs_and_fits_the_figure(tmp_path):
    "The diagram pools all 3 runs of the chosen method, though it was ranked on 2; its title says 3 and stays inside the figure"
    from fastai_bmx.app.report.posthoc_report import recommended_reliability
    scores = {'instance': [(150, 150)] * 3, 'sqrt': [(200, 160)] * 3, 'cb': [(190, 200), None, (190, 200)]}
    folder = _folder(tmp_path, scores)
    r = recommend(folder, 'accuracy')
    fct.test_eq((r.method, r.runs), ('sqrt', 2))
    fig = recommended_reliability(folder, fit_folder(folder, 'accuracy'), r)
    fig.canvas.draw()
    title = fig.axes[0].title
    assert '3 runs pooled' in title.get_text(), title.get_text()
    box, page = title.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1, (box, page)  # a one-line title of this length ran past the right edge


def test_old_rows_gain_every_score_from_their_predictions(tmp_path):
    folder = _folder(tmp_path, {'instance': [(150, 150)], 'sqrt': [(200, 180)]})
    before = folder.results()
    assert 'ece' not in before.columns
    with folder.lock(): res = fill_run_scores(folder)
    for c in ('auroc', 'ece', 'classwise_ece', 'nll', 'brier', 'mcc', 'balanced_accuracy'): assert res[c].notna().all(), c
    fct.test_close(res.set_index('run').loc['sqrt_seed0', 'accuracy'], 180 / 300)
    fct.test_eq(list(folder.results().columns), list(res.columns))  # written back


# --- bmx-compare: the recommendation and the export ---------------------------------------------------------------

def cli(*args, timeout=900):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _load_in_fresh_process(pkl:Path, items:Path, out:Path, predict:bool=False):
    code = f"""
import numpy as np, warnings; warnings.filterwarnings('ignore')
from fastai.learner import load_learner
learn = load_learner({str(pkl)!r})
items = list(np.load({str(items)!r}, allow_pickle=True))
probs, _ = learn.get_preds(dl=learn.dls.test_dl(items))
np.save({str(out)!r}, probs.numpy())
print(sorted(type(cb).__name__ for cb in learn.cbs))
if {predict}: print('predict', learn.predict(items[0])[0])"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return np.load(out), r.stdout


def test_bmx_compare_recommends_and_exports_a_model_that_predicts_the_same_in_a_fresh_process(tmp_path):
    "The digits (arrays, no flip): Recommended: on stdout and in results.md, then recommended.pkl reproduces the report's probabilities"
    out = tmp_path/'d'
    r = cli('--methods', 'instance', 'sqrt', '--seeds', '0', '1', '--epochs', '2', '--arch', 'resnet10t', '--bs', '32', '--quiet',
            '--threads', '1', '--out', out, '--export')
    assert r.returncode == 0, r.stderr[-3000:]
    rec_line = next(l for l in r.stdout.splitlines() if l.startswith('Recommended: '))
    assert rec_line in (out/'results.md').read_text()
    info = json.loads((out/'recommended.json').read_text())
    folder = RunFolder(out)
    fit = fit_folder(folder, 'mcc')[info['run']]
    want = posthoc_predictions(folder.preds(info['run'])[0], folder.record.counts, fit, info['variant'])[0]
    from fastai_bmx.data import digits_splits
    np.save(tmp_path/'items.npy', digits_splits()['test'][0])
    got, printed = _load_in_fresh_process(out/'recommended.pkl', tmp_path/'items.npy', tmp_path/'probs.npy', predict=True)
    fct.test_close(got, want, eps=1e-5)
    assert 'BalancedMixUp' not in printed and "['CastToTensor', 'ProgressCallback', 'Recorder', 'TrainEvalCallback']" in printed, printed
    assert info['retrained'] and info['retrain_max_prob_difference'] < 1e-6  # trained again with its seed: the same run
    assert (out/'reliability.png').exists() and '## Calibration' in (out/'results.md').read_text()
    r = cli('--methods', 'instance', 'sqrt', '--seeds', '0', '1', '--epochs', '2', '--arch', 'resnet10t', '--bs', '32', '--quiet',
            '--threads', '1', '--out', out, '--select', 'kendall_tau')
    assert r.returncode == 2 and '--select kendall_tau' in r.stderr, r.stderr[-2000:]


def test_an_exported_flip_tta_run_with_bmx_matches_its_report(tmp_path):
    "A .npz (a mirror keeps the class: flip TTA) trained with Balanced-MixUp: the exported model averages the flips itself"
    from fastai_bmx.app.decide.export import export_run
    from fastai_bmx.app.compare import plan_compare, run_plan
    g = np.random.default_rng(0)
    a = {}
    for split, n in (('train', 60), ('val', 18), ('test', 18)):
        a[f'{split}_images'] = g.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
        a[f'{split}_labels'] = np.resize([0, 0, 0, 1, 2], n).astype(np.uint8).reshape(-1, 1)
    np.savez(tmp_path/'toy.npz', **a)
    plan = plan_compare(str(tmp_path/'toy.npz'), tmp_path/'out', methods=['bmx-0.2'], seeds=[0], epochs=2, arch='resnet10t', bs=16,
                        size=24, show_bar=False)
    run_plan(plan)
    fit = fit_folder(plan.folder, 'mcc')['bmx-0.2_seed0']
    info = export_run(plan.folder, 'bmx-0.2_seed0', 'post-hoc τ', fit, plan.load, plan.train)
    assert info['flip_tta'] and info['size'] == 24
    np.save(tmp_path/'items.npy', a['test_images'])
    got, printed = _load_in_fresh_process(tmp_path/'out'/'recommended.pkl', tmp_path/'items.npy', tmp_path/'probs.npy')
    want = posthoc_predictions(plan.folder.preds('bmx-0.2_seed0')[0], plan.folder.record.counts, fit, 'post-hoc τ')[0]
    fct.test_close(got, want, eps=1e-5)
    assert 'BalancedMixUp' not in printed


def test_an_exported_two_class_csv_run_decides_with_its_threshold(tmp_path):
    "Image files and two classes: the exported loaders read the files, and the decisions follow the tuned threshold"
    from fastai_bmx.app.decide.export import export_run
    from fastai_bmx.app.compare import plan_compare, run_plan
    from fastai.learner import load_learner
    g, rows = np.random.default_rng(0), []
    for split, n in (('train', 40), ('valid', 20), ('test', 20)):
        for i in range(n):
            f = f'{split}_{i}.png'
            Image.fromarray(g.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path/f)
            rows.append((f, 'rare' if i % 4 == 0 else 'common', split))
    pd.DataFrame(rows, columns=['fname', 'label', 'split']).to_csv(tmp_path/'labels.csv', index=False)
    plan = plan_compare(str(tmp_path/'labels.csv'), tmp_path/'out', methods=['instance'], seeds=[0], epochs=2, arch='resnet10t',
                        bs=8, size=16, show_bar=False)
    run_plan(plan)
    fit = fit_folder(plan.folder, 'mcc')['instance_seed0']
    assert fit.threshold is not None and fit.positive == 1  # 'rare' sorts after 'common'
    export_run(plan.folder, 'instance_seed0', 'threshold', fit, plan.load, plan.train)
    learn = load_learner(tmp_path/'out'/'recommended.pkl')
    files = [tmp_path/f for f, _, s in rows if s == 'test']
    probs, _, dec = learn.get_preds(dl=learn.dls.test_dl(files), with_decoded=True)
    want_p, want_dec = posthoc_predictions(plan.folder.preds('instance_seed0')[0], plan.folder.record.counts, fit, 'threshold')
    fct.test_close(probs.numpy(), want_p, eps=1e-5)
    fct.test_eq(dec.numpy(), want_dec)
