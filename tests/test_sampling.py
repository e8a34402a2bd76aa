"Sampling probabilities, label extraction and resampled DataLoaders"
import numpy as np, pandas as pd, torch, pytest
from scipy import stats
from hypothesis import given, settings, strategies as st
import fastcore.test as fct
from fastai.data.core import TfmdDL, Datasets, DataLoaders
from fastai.data.transforms import Categorize, MultiCategorize, ItemGetter, IndexSplitter
from fastai.callback.data import WeightedDL
from fasttransform import Transform
from fastai.torch_core import set_seed
from fastai_bmx.sampling import *

def tensor_ds(counts, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), j) for j, n in enumerate(counts)])
    return torch.utils.data.TensorDataset(torch.randn(len(y), d, generator=g), y)

def drawn_classes(dl, n_epochs):
    return torch.cat([yb for _ in range(n_epochs) for _, yb in dl]).numpy()

# --- pure functions ---------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=2, max_size=300), st.floats(0, 1))
def test_sampling_probs_properties(labels, q):
    labels = np.array(labels)
    p = sampling_probs(labels, q)
    fct.test_close(p.sum(), 1.)
    counts = np.bincount(labels)
    fct.test_close(np.bincount(labels, weights=p, minlength=len(counts)), class_probs(counts, q), eps=1e-9)
    for j in np.unique(labels): fct.test_close(p[labels == j], np.full(counts[j], p[labels == j][0]))  # uniform within a class

def test_class_probs_ratios():
    counts = np.array([486, 128, 206, 194, 66])
    for q in (0., .5, 1.):
        p = class_probs(counts, q)
        fct.test_close(p[0]/p[4], (486/66)**q)
    fct.test_close(class_probs(counts, 1.), counts/counts.sum())
    fct.test_close(class_probs(counts, 0.), np.full(5, .2))
    fct.test_close(class_probs([5, 0, 20], .5), np.array([5**.5, 0, 20**.5])/(5**.5 + 20**.5))

@pytest.mark.parametrize('q', [-0.1, 1.01, float('nan'), float('inf'), '0.5', None, True])
def test_bad_q(q):
    with pytest.raises(ValueError, match=r'not a number in \[0, 1\].*q=1 is instance sampling'): check_q(q)

# --- labels -----------------------------------------------------------------------------------------------------

def test_labels_from_datasets_run_label_pipeline_only():
    df = pd.DataFrame({'x': np.arange(12.), 'y': list('abcabcabcaab')})
    calls = []
    def load(r): calls.append(r); return r['x']
    dsets = Datasets(df, [[load], [ItemGetter('y'), Categorize()]], splits=IndexSplitter([10, 11])(df))
    dls = dsets.dataloaders(bs=2)  # building loaders reads one item (fastai's `_one_pass`); reading labels must read none
    calls.clear()
    fct.test_eq(get_labels(dsets.train), np.array([0, 1, 2]*3 + [0]))
    fct.test_eq(get_labels(dls.train), get_labels(dsets.train))
    fct.test_eq(calls, [])

def test_labels_from_attributes_and_arrays():
    class Unloadable(torch.utils.data.Dataset):
        def __len__(self): return 3
        def __getitem__(self, i): raise AssertionError('loaded an input')
    class TorchvisionLike(Unloadable): targets = [0, 1, 1]
    class MedMNISTLike(Unloadable): labels = np.array([[2], [0], [1]], dtype=np.uint8)
    fct.test_eq(get_labels(TorchvisionLike()), np.array([0, 1, 1]))
    fct.test_eq(get_labels(MedMNISTLike()), np.array([2, 0, 1]))
    fct.test_eq(get_labels(tensor_ds([2, 1])), np.array([0, 0, 1]))
    fct.test_eq(get_labels(pd.Series([1, 0])), np.array([1, 0]))

@pytest.mark.parametrize('labels,err,msg', [
    (np.zeros((4, 3), dtype=int), ValueError, 'one class index per item'),
    (np.array([0.1, 2.5]), TypeError, 'regression targets'),
    (np.array(['a', 'b']), TypeError, 'integer class indices'),
    (np.array([0, -1]), ValueError, 'negative class index'),
    (np.array([], dtype=int), ValueError, 'has no items'),
])
def test_bad_labels(labels, err, msg):
    with pytest.raises(err, match=msg): check_labels(labels)

def test_multilabel_and_out_of_vocab():
    df = pd.DataFrame({'x': np.arange(4.), 'y': [['a'], ['a', 'b'], ['b'], ['a']]})
    dsets = Datasets(df, [[ItemGetter('x')], [ItemGetter('y'), MultiCategorize()]])
    with pytest.raises(ValueError, match='Multi-label'): get_labels(dsets)
    with pytest.raises(ValueError, match='class index 7, beyond the vocabulary of 5 classes'): check_labels([0, 7], n_classes=5)

def test_unreadable_dataset_says_what_to_pass():
    with pytest.raises(TypeError, match=r'Pass them explicitly.*labels='): get_labels(object())
    with pytest.raises(TypeError, match='list of \\(input, label\\) items'): get_labels([(torch.zeros(2), 0), (torch.zeros(2), 1)])

# --- resampled loaders ------------------------------------------------------------------------------------------

def test_resampled_dl_keeps_loader_settings():
    class Scale(Transform):
        def encodes(self, x:torch.FloatTensor): return x*100
    dl = TfmdDL(tensor_ds([60, 30, 10]), bs=16, shuffle=True, drop_last=True, device='cpu', after_batch=Scale())
    bal = resampled_dl(dl, 0.)
    assert bal.one_batch()[0].abs().max() > 20  # the batch transform runs on partner batches too
    assert isinstance(bal, WeightedDL) and bal.dataset is dl.dataset
    fct.test_eq((bal.bs, bal.drop_last, bal.device, bal.n), (dl.bs, dl.drop_last, dl.device, dl.n))
    for nm in ('after_item', 'before_batch', 'after_batch'): fct.test_eq(getattr(bal, nm).fs, getattr(dl, nm).fs)

@pytest.mark.parametrize('q', [0., .5, 1.])
def test_resampled_class_frequencies(q):
    counts = [300, 60, 20, 5]
    set_seed(0)
    dl = TfmdDL(tensor_ds(counts), bs=50, shuffle=False)  # shuffle=False must not switch the weights off
    drawn = drawn_classes(resampled_dl(dl, q), 10)
    expected = class_probs(counts, q) * len(drawn)
    assert stats.chisquare(np.bincount(drawn, minlength=4), expected).pvalue > 1e-3
    if q < 1: assert stats.chisquare(np.bincount(drawn, minlength=4), np.array(counts)/sum(counts)*len(drawn)).pvalue < 1e-6

def test_fastai_weighteddl_trap_is_avoided():
    "fastai's WeightedDL silently returns plain order when shuffle=False; resampled_dl never does"
    counts = [90, 10]
    dl = TfmdDL(tensor_ds(counts), bs=10, shuffle=False)
    wgts = sampling_probs(np.repeat([0, 1], counts), 0.)
    fastai_dl = dl.new(cls=WeightedDL, wgts=wgts)
    fct.test_eq(fastai_dl.get_idxs(), list(range(100)))  # the trap: weights ignored
    set_seed(1)
    assert 0.35 < drawn_classes(resampled_dl(dl, 0.), 5).mean() < 0.65

def test_copies_keep_weights_and_eval_pass_is_plain():
    dl = TfmdDL(tensor_ds([50, 5]), bs=5, shuffle=True)
    bal = resampled_dl(dl, 0.)
    fct.test_close(bal.new().wgts, bal.wgts)
    fct.test_eq(bal.new(shuffle=False).get_idxs(), list(range(55)))

def test_resampling_is_reproducible():
    dl = resampled_dl(TfmdDL(tensor_ds([40, 4]), bs=4, shuffle=True), 0.)
    set_seed(3); a = dl.get_idxs()
    set_seed(3); b = dl.get_idxs()
    fct.test_eq(a, b)

def test_dataloaders_resampled_leaves_valid():
    dls = DataLoaders(TfmdDL(tensor_ds([50, 5]), bs=5, shuffle=True), TfmdDL(tensor_ds([5, 5]), bs=5))
    sq = dls.resampled(.5)
    assert sq.valid is dls.valid and isinstance(sq.train, WeightedDL) and sq.train.dataset is dls.train.dataset

def test_resampled_dl_bad_input():
    dl = TfmdDL(tensor_ds([10, 5]), bs=5, shuffle=True)
    with pytest.raises(ValueError, match='Got 3 labels for a dataset of 15 items'): resampled_dl(dl, labels=[0, 1, 0])
    with pytest.raises(ValueError, match='only one class'): resampled_dl(TfmdDL(tensor_ds([12]), bs=4))
    with pytest.raises(ValueError, match='no items'): resampled_dl(TfmdDL(tensor_ds([0, 0]), bs=4))
    with pytest.raises(TypeError, match='needs a fastai TfmdDL'): resampled_dl(torch.utils.data.DataLoader(tensor_ds([3, 3])))
    with pytest.raises(ValueError, match='not a number in'): resampled_dl(dl, q=2)


def test_resampled_draws_follow_any_weights_and_are_seeded():
    "The O(n) draw (multinomial counts in random order) samples i.i.d. ∝ wgts, for weights that vary within a class too"
    from scipy import stats
    from fastai.data.core import TfmdDL
    from fastai_bmx.sampling import ResampledDL
    w = np.arange(1, 21, dtype=float)  # 20 items, item i drawn ∝ i+1
    dl = ResampledDL(list(range(20)), bs=4, wgts=w, shuffle=True)
    np.random.seed(0)
    draws = np.concatenate([np.asarray(dl.get_idxs()) for _ in range(500)])
    fct.test_eq(len(draws), 500 * 20)
    assert stats.chisquare(np.bincount(draws, minlength=20), w / w.sum() * len(draws)).pvalue > 1e-3
    np.random.seed(1); a = dl.get_idxs()
    np.random.seed(1); b = dl.get_idxs()
    fct.test_eq(a, b)
    # the order is random, not grouped by item: consecutive draws are independent (a grouped order would be ~0.95)
    assert np.mean(draws[1:] == draws[:-1]) < 0.2
    fct.test_eq(ResampledDL(list(range(20)), bs=4, wgts=w, shuffle=False).get_idxs(), list(range(20)))


@pytest.mark.parametrize('counts,err', [([], 'not empty'), ([[1, 2]], '1-D'), (['a', 'b'], 'numbers'), ([3, -1], '≥ 0'),
                                        ([3, np.nan], 'finite'), ([0, 0], 'Every count is 0')])
def test_class_probs_bad_counts(counts, err):
    "Counts that can't be sampled from get an error naming the problem, not NaN probabilities"
    with pytest.raises((ValueError, TypeError), match=err): class_probs(counts, 0.5)
