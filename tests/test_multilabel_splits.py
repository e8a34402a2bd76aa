"Tests of the multi-label splits: iterative stratification (`iterative_folds`) and `findings_valid_mask`"
import numpy as np, pandas as pd, pytest
from hypothesis import given, settings, strategies as st
import fastcore.test as fct
from fastai_bmx.splits import iterative_folds, findings_valid_mask, valid_mask


def longtail_findings(n=2000, c=12, seed=0):
    "Multi-hot findings whose positive rates fall from 30% to 0.25%: rare findings with a handful of positives"
    return np.random.default_rng(seed).random((n, c)) < np.geomspace(.3, .0025, c)

def per_fold(f, folds, k):
    return np.stack([f[folds == j].sum(0) for j in range(k)])

def random_folds(n, k, seed):
    return np.random.default_rng(seed).permutation(np.arange(n) % k)

def check_stratified(f, k, seeds=range(3)):
    "Every finding within one positive of its 1/k share in every fold; random folds miss by far more, and empty folds"
    tot, enough = f.sum(0), f.sum(0) >= k
    for seed in seeds:
        folds = iterative_folds(f, k, seed)
        dev = np.abs(per_fold(f, folds, k) - tot / k)
        assert dev.max() < 1, dev.max()
        assert (per_fold(f, folds, k)[:, enough] > 0).all()  # no fold without a positive of a finding with >= k
        rnd = per_fold(f, random_folds(len(f), k, seed), k)
        assert np.abs(rnd - tot / k).max() > 4 * dev.max()


# ---------------------------------------------------------------- iterative_folds
def test_iterative_folds_stratify_a_long_tailed_set():
    f = longtail_findings()
    check_stratified(f, 5)
    fct.test_eq(np.bincount(iterative_folds(f, 5)), [400] * 5)  # the items with no finding keep the sizes
    # on the rare findings (5 to 30 positives), random folds leave folds without a positive; iterative ones never do
    rare = (f.sum(0) >= 5) & (f.sum(0) <= 30)
    empty_random = sum((per_fold(f, random_folds(len(f), 5, s), 5)[:, rare] == 0).sum() for s in range(20))
    empty_iter = sum((per_fold(f, iterative_folds(f, 5, s), 5)[:, rare] == 0).sum() for s in range(20))
    assert empty_iter == 0 and empty_random >= 3, (empty_iter, empty_random)


def test_iterative_folds_on_rfmid(real_data):
    d = pd.read_csv(real_data('rfmid_64/labels.csv'))
    d = d[d.split != 'test']  # the pool: train and valid
    f = d.labels.str.get_dummies('|').to_numpy().astype(bool)
    check_stratified(f, 5)
    enough = f.sum(0) >= 5
    empty_random = sum((per_fold(f, random_folds(len(f), 5, s), 5)[:, enough] == 0).sum() for s in range(5))
    assert empty_random >= 10, empty_random  # a random split leaves rare findings out of folds
    sizes = np.bincount(iterative_folds(f, 5), minlength=5)
    assert (np.abs(sizes - len(f) / 5) < 0.1 * len(f) / 5).all(), sizes  # every image holds a finding here


@settings(max_examples=25, deadline=None)
@given(st.integers(10, 120), st.integers(1, 6), st.integers(2, 5), st.integers(0, 1000))
def test_iterative_folds_partition_and_are_deterministic(n, c, k, seed):
    g = np.random.default_rng(seed)
    f = g.random((n, c)) < g.uniform(.02, .6, c)
    folds = iterative_folds(f, k, seed)
    fct.test_eq(folds.shape, (n,))
    assert set(folds.tolist()) <= set(range(k))
    masks = np.stack([folds == j for j in range(k)])
    fct.test_eq(masks.sum(0), np.ones(n, int))  # every item in exactly one fold
    fct.test_eq(iterative_folds(f, k, seed), folds)
    fct.test_eq(iterative_folds(f.astype(np.float32), k, seed), folds)  # 0/1 floats are the same findings


def test_iterative_folds_seed_and_one_finding():
    f = longtail_findings(500)
    assert not np.array_equal(iterative_folds(f, 5, 0), iterative_folds(f, 5, 1))
    y = np.repeat([0, 1], [40, 10])  # one finding: its positives and the rest are each split evenly
    folds = iterative_folds(y[:, None], 5, 3)
    fct.test_eq(np.bincount(folds[y == 1], minlength=5), [2] * 5)
    fct.test_eq(np.bincount(folds, minlength=5), [10] * 5)


# ---------------------------------------------------------------- findings_valid_mask
def test_findings_valid_mask_contract():
    f = longtail_findings(1000)
    masks = np.stack([findings_valid_mask(f, fold=j, k=5, split_seed=4) for j in range(5)])
    fct.test_eq(masks.sum(0), np.ones(len(f), int))
    fct.test_eq(masks[3], iterative_folds(f, 5, 4) == 3)
    given_split = np.where(np.arange(len(f)) % 4 == 0, 'valid', 'train')
    fct.test_eq(findings_valid_mask(f, given_split), given_split == 'valid')
    fct.test_eq(findings_valid_mask(f, given_split, fold=1, split_seed=4), masks[1])  # a fold wins over the given split
    drawn = findings_valid_mask(f, np.full(len(f), 'train'), valid_pct=0.25, split_seed=2)  # no valid given: a draw
    fct.test_eq(drawn, findings_valid_mask(f, valid_pct=0.25, split_seed=2))
    assert abs(drawn.mean() - 0.25) < 0.02
    common = f.sum(0) >= 20
    assert (np.abs(f[drawn].sum(0)[common] / f.sum(0)[common] - 0.25) < 0.05).all()
    assert not np.array_equal(drawn, findings_valid_mask(f, valid_pct=0.25, split_seed=3))
    y = np.random.default_rng(0).integers(0, 3, 300)  # one finding per item: as stratified as the single-label mask
    one_hot = np.eye(3, dtype=bool)[y]
    for mask in (findings_valid_mask(one_hot, fold=0, k=3), valid_mask(y, fold=0, k=3)):
        assert (np.abs(np.bincount(y[mask], minlength=3) - np.bincount(y) / 3) < 1).all()


def one_line(excinfo):
    msg = str(excinfo.value)
    assert '\n' not in msg
    return msg

@pytest.mark.parametrize('call, err, msg', [
    (lambda f: iterative_folds(f, 1), ValueError, 'k >= 2'),
    (lambda f: iterative_folds(f, 2.5), ValueError, 'k >= 2'),
    (lambda f: iterative_folds(f[:3], 5), ValueError, 'only 3 items'),
    (lambda f: iterative_folds(f, 5, seed=-1), ValueError, 'seed=-1'),
    (lambda f: iterative_folds(f, 5, seed=None), ValueError, 'seed=None'),
    (lambda f: iterative_folds(np.arange(20), 5), ValueError, 'multi-hot'),
    (lambda f: iterative_folds(f * 2, 5), ValueError, '0/1'),
    (lambda f: iterative_folds(f[:0], 5), ValueError, 'empty'),
    (lambda f: findings_valid_mask(f, fold=5, k=5), ValueError, '0..4'),
    (lambda f: findings_valid_mask(f, valid_pct=1.5), ValueError, 'valid_pct=1.5'),
    (lambda f: findings_valid_mask(f, valid_pct=float('nan')), ValueError, 'valid_pct=nan'),
    (lambda f: findings_valid_mask(f, split=['train'] * 3), ValueError, 'split has 3 entries'),
])
def test_bad_input_refused_in_one_line(call, err, msg):
    f = longtail_findings(40, 4).astype(int)
    with pytest.raises(err) as e: call(f)
    assert msg in one_line(e)
