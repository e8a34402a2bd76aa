"The recommendation's rule: it leaves the reference only where validation shows better (rule 'evidence', 'one-se'), reads no test prediction to choose, and says how sure it is"
import subprocess, sys
from pathlib import Path
import numpy as np, pytest
import fastcore.test as fct
from fastai_bmx.app.decide.recommend import recommend, recommendation_lines
from fastai_bmx.app.plan.validate import RULES
from fastai_bmx.app.run.store import RunFolder
from fastai_bmx.app.plan.sources import RunRecord

K = 3

def _probs(t, right):
    "Probabilities whose argmax is right on the first `right` items, and wrong after"
    pred = np.where(np.arange(len(t)) < right, t, (t + 1) % K)
    p = np.full((len(t), K), 0.05); p[np.arange(len(t)), pred] = 0.9
    return p

def _folder(path, scores, n=300, folds=None):
    "Per method, per seed (and per fold if `folds`), (validation right, test right) items: a folder whose scores are known exactly"
    Path(path).mkdir(parents=True, exist_ok=True)
    folder = RunFolder(path)
    folder.save_record(RunRecord('toy', ('a', 'b', 'c'), (100, 100, 100)))
    t = np.arange(n) % K
    for m, per_seed in scores.items():
        for seed, per_fold in enumerate(per_seed):
            for fold, (v, te) in (enumerate(per_fold) if folds else [(None, per_fold)]):
                vt = np.roll(t, fold or 0)[: n // 2] if folds else t  # each fold validates on items of its own
                folder.add_run(dict(run=f'{m}_seed{seed}' + (f'_fold{fold}' if folds else ''), seed=seed, fold=fold, method=m,
                                    accuracy=te / n), _probs(t, te), t, valid_probs=_probs(vt, v), valid_targs=vt)
    return folder

NOISE = {'instance': [(150, 150), (154, 146), (152, 148)], 'sqrt': [(158, 147), (146, 149), (156, 151)]}
CLEAR = {'instance': [(150, 150), (154, 146), (152, 148)], 'sqrt': [(210, 200), (205, 205), (208, 203)]}


def test_a_lead_within_the_noise_keeps_the_reference_and_says_why(tmp_path):
    folder = _folder(tmp_path, NOISE)
    fct.test_eq(recommend(folder, 'accuracy').setting, 'sqrt')  # the best validation mean, by 4.7 items in 300
    for rule in ('evidence', 'one-se'):
        r = recommend(folder, 'accuracy', rule=rule)
        fct.test_eq((r.setting, r.rule, r.valid_items, r.closest[0][0]), ('instance', rule, 300, 'sqrt'))
        assert r.closest[0][1]['lo'] < 0 and r.closest[0][1]['diff'] > 0
        line = recommendation_lines(r)[1]
        assert line.startswith('No setting beat instance on validation ') and '(300 validation items, 3 runs)' in line, line
        assert 'closest: sqrt +' in line, line
    line = recommendation_lines(recommend(folder, 'accuracy'))[1]  # the default says its lead is within the noise
    assert line.startswith('On validation it beat instance by +') and "within the noise, so validation can't tell it from instance" in line, line


def test_a_lead_beyond_the_noise_on_validation_and_test_is_recommended(tmp_path):
    folder = _folder(tmp_path, CLEAR)
    for rule in RULES:
        r = recommend(folder, 'accuracy', rule=rule)
        fct.test_eq((r.setting, r.closest), ('sqrt', ()))
        assert r.valid_vs_reference['lo'] > 0 and r.vs_reference['lo'] > 0, (r.valid_vs_reference, r.vs_reference)
        line = recommendation_lines(r)[1]
        assert line.startswith('On validation it beat instance by +') and 'noise' not in line, line


@pytest.mark.parametrize('rule', RULES)
def test_the_rule_never_reads_test_predictions(tmp_path, rule):
    for i, scores in enumerate((NOISE, CLEAR)):
        a = recommend(_folder(tmp_path/f'{i}a', scores), 'accuracy', rule=rule)
        flipped = {m: [(v, 300 - te) for v, te in per_seed] for m, per_seed in scores.items()}  # every test score turned round
        b = recommend(_folder(tmp_path/f'{i}b', flipped), 'accuracy', rule=rule)
        fct.test_eq((a.setting, a.valid_mean, a.valid_vs_reference, a.closest), (b.setting, b.valid_mean, b.valid_vs_reference, b.closest))
        assert a.test_mean != b.test_mean


def test_folds_pool_each_seeds_validation_items(tmp_path):
    scores = {'instance': [[(75, 150), (76, 149)], [(74, 151), (75, 150)]], 'sqrt': [[(140, 190), (138, 192)], [(141, 189), (139, 191)]]}
    r = recommend(_folder(tmp_path, scores, folds=2), 'accuracy', rule='evidence')
    fct.test_eq((r.setting, r.runs, r.valid_items), ('sqrt', 4, 300))  # 2 folds of 150 validation items, pooled per seed
    assert r.valid_vs_reference['lo'] > 0


def test_an_unknown_rule_is_refused_at_once():
    fct.test_fail(lambda: recommend(RunFolder('/nonexistent'), 'accuracy', rule='bestest'), contains="--rule bestest: use one of")
    r = subprocess.run([str(Path(sys.executable).parent/'bmx-report'), '/nonexistent', '--rule', 'bestest'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "invalid choice: 'bestest' (choose from 'best', 'one-se', 'evidence')" in r.stderr, r.stderr
    help_ = subprocess.run([str(Path(sys.executable).parent/'bmx-compare'), '--help'], capture_output=True, text=True, timeout=60).stdout
    assert '--rule {' + ','.join(RULES) + '}' in help_, help_  # the command's choices are the rules


def test_where_the_reference_validates_best_the_default_names_what_came_closest(tmp_path):
    scores = {'instance': [(210, 150), (205, 152), (208, 149)], 'sqrt': [(150, 160), (154, 158), (152, 161)], 'cb': [(120, 170), (118, 171), (121, 169)]}
    r = recommend(_folder(tmp_path, scores), 'accuracy')
    fct.test_eq((r.setting, r.rule, len(r.closest), r.closest[0][0]), ('instance', 'best', 2, 'sqrt'))  # the next two by validation mean
    assert all(v['hi'] < 0 for _, v in r.closest)  # both behind it on validation beyond the noise
    line = recommendation_lines(r)[1]
    assert line.startswith("No setting's mean validation accuracy beat instance's (300 validation items, 3 runs); closest: sqrt -18."), line
