"Tests of fastai_bmx.splits: one stratified k-fold, one pool-and-refold rule, one split seed"
import numpy as np, pytest
from hypothesis import given, settings, strategies as st
import fastcore.test as fct
from fastai_bmx.splits import stratified_kfold, kfold_splitter, valid_mask, refold


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



@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(3, 30), min_size=2, max_size=5), st.integers(2, 3), st.integers(0, 1000))
def test_valid_mask_property(counts, k, seed):
    "Each pooled item validates in exactly one fold; names and indices give the same folds; the split seed decides them"
    y = np.repeat(np.arange(len(counts)), counts)
    names = np.array([f'class {c}' for c in range(len(counts))])[y]
    masks = np.stack([valid_mask(y, fold=f, k=k, split_seed=seed) for f in range(k)])
    fct.test_eq(masks.sum(0), np.ones(len(y), int))
    fct.test_eq(np.stack([valid_mask(names, fold=f, k=k, split_seed=seed) for f in range(k)]), masks)


def test_refold_pools_train_and_valid_and_keeps_test():
    y = np.repeat(np.arange(3), [20, 8, 5])
    x = np.arange(len(y))
    splits = {'train': (x[:25], y[:25]), 'valid': (x[25:], y[25:]), 'test': (x[:4], y[:4])}
    folds = [refold(splits, f, k=3, split_seed=7) for f in range(3)]
    fct.test_eq(np.sort(np.concatenate([f['valid'][0] for f in folds])), x)
    for f in folds:
        fct.test_eq(np.sort(np.concatenate([f['train'][0], f['valid'][0]])), x)
        assert f['test'] is splits['test']
    with pytest.raises(ValueError, match='numbered 0..2'): refold(splits, 3, k=3)


def test_valid_mask_given_split_and_drawn_split():
    y = np.repeat([0, 1], [40, 10])
    given = np.where(np.arange(50) < 10, 'valid', 'train')
    fct.test_eq(valid_mask(y, given), given == 'valid')
    drawn = valid_mask(y, valid_pct=0.2, split_seed=3)
    fct.test_eq(np.bincount(y[drawn]), [8, 2])
    fct.test_eq(drawn, valid_mask(y, valid_pct=0.2, split_seed=3))
    with pytest.raises(ValueError, match='valid_pct'): valid_mask(y, valid_pct=1.5)
