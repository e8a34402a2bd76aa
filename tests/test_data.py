"Tests of fastai_bmx.data and .medmnist: MedMNIST files, in-memory DataLoaders, digits, labels read without inputs"
import os, math
from pathlib import Path
import numpy as np, pandas as pd, torch, pytest
import pickle
import fastcore.test as fct
from fastai.torch_core import set_seed
from hypothesis import given, settings, strategies as st
from fastai.data.core import DataLoaders
from fastai.torch_core import TensorImage
from fastai_bmx.data import *
from fastai_bmx.medmnist import *
from fastai_bmx.files import *
from fastai_bmx.sampling import get_labels


def rand_split(n, h=28, c=3, k=3, seed=0):
    g = np.random.default_rng(seed)
    shape = (n, h, h, c) if c > 1 else (n, h, h)
    return g.integers(0, 256, shape, dtype=np.uint8), g.integers(0, k, (n, 1), dtype=np.uint8)

def write_npz(fname, n=(40, 10, 20), **kw):
    "A MedMNIST-format file of random images; returns its arrays"
    arrs = {}
    for seed, (s, m) in enumerate(zip(('train', 'val', 'test'), n)):
        arrs[f'{s}_images'], arrs[f'{s}_labels'] = rand_split(m, seed=seed, **kw)
    np.savez(fname, **arrs)
    return arrs

def np_normalised(imgs, train_imgs):
    "NumPy reference: images scaled to [0,1] and normalised with the train split's per-channel mean/std, as (N,C,H,W)"
    to4 = lambda a: (a[..., None] if a.ndim == 3 else a).astype(np.float64) / 255
    tr = to4(train_imgs)
    x = (to4(imgs) - tr.mean((0, 1, 2))) / tr.std((0, 1, 2))
    return x.transpose(0, 3, 1, 2)


# --- tiny generated files ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('h', [28, 64])
@pytest.mark.parametrize('c', [1, 3])
def test_medmnist_dls_generated(tmp_path, h, c):
    arrs = write_npz(tmp_path/'somemnist.npz', h=h, c=c, k=4)
    dls = medmnist_dls(tmp_path/'somemnist.npz', bs=8)
    fct.test_eq(len(dls.loaders), 3)
    fct.test_eq([len(dl.dataset) for dl in dls.loaders], [40, 10, 20])
    fct.test_eq(dls.vocab, ['0', '1', '2', '3'])
    fct.test_eq(dls.c, 4)
    assert dls.test is dls[2] and not dls.ordinal
    for dl, s in zip(dls.loaders, ('train', 'val', 'test')): fct.test_eq(get_labels(dl), arrs[f'{s}_labels'][:, 0])
    x, y = dls.train.one_batch()
    assert isinstance(x, TensorImage) and x.dtype == torch.float32
    fct.test_eq(x.shape, (8, 3, h, h))  # grayscale repeated to 3 channels
    fct.test_eq(y.dtype, torch.int64)
    # valid/test: not shuffled, not augmented: exactly the stored pixels, normalised with the train split's stats
    for dl, s in ((dls.valid, 'val'), (dls.test, 'test')):
        xb, yb = dl.one_batch()
        ref = np_normalised(arrs[f'{s}_images'][:8], arrs['train_images'])
        if c == 1: ref = np.repeat(ref, 3, axis=1)
        fct.test_close(xb.numpy(), ref, eps=1e-4)
        fct.test_eq(yb.numpy(), arrs[f'{s}_labels'][:8, 0])

def test_gray_keep_one_channel_and_resize(tmp_path):
    write_npz(tmp_path/'g.npz', h=28, c=1)
    fct.test_eq(medmnist_dls(tmp_path/'g.npz', bs=8, expand_gray=False).one_batch()[0].shape, (8, 1, 28, 28))
    fct.test_eq(medmnist_dls(tmp_path/'g.npz', bs=8, size=32).one_batch()[0].shape, (8, 3, 32, 32))
    fct.test_eq(medmnist_dls(tmp_path/'g.npz', bs=8, size=(16, 20)).one_batch()[0].shape, (8, 3, 16, 20))

def test_resize_matches_torch_interpolate():
    x, y = rand_split(12, h=28, c=3)
    dls = arrays_dls({'train': (x, y), 'valid': (x, y)}, bs=4, size=14, batch_tfms=[])
    stored = dls.train.dataset.tls[0].tfms[0].images
    ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2).float(), size=(14, 14), mode='bilinear',
                                          antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)
    fct.test_eq(stored[:12], ref)  # the first 12 are the train split
    assert stored.dtype == torch.uint8

def test_train_augmented_valid_not(tmp_path):
    arrs = write_npz(tmp_path/'a.npz', n=(64, 16, 16))
    dls = medmnist_dls(tmp_path/'a.npz', bs=64, shuffle=False, drop_last=False)
    set_seed(0)
    xb, _ = dls.train.one_batch()
    ref = np_normalised(arrs['train_images'], arrs['train_images'])
    changed = np.abs(xb.numpy() - ref).max((1, 2, 3)) > 1e-3
    # p(flip or affine) is well above 1/2; when any image gets an affine, fastai resamples the whole batch, so all may change
    assert changed.mean() > 0.5, changed.mean()
    no_aug = medmnist_dls(tmp_path/'a.npz', bs=64, shuffle=False, drop_last=False, batch_tfms=[])
    fct.test_close(no_aug.train.one_batch()[0].numpy(), ref, eps=1e-4)

def test_seed_shuffle(tmp_path):
    write_npz(tmp_path/'s.npz', n=(200, 10, 10))
    order = lambda seed: [int(t) for _, y in medmnist_dls(tmp_path/'s.npz', bs=50, seed=seed, batch_tfms=[]).train for t in y]
    fct.test_eq(order(1), order(1))
    fct.test_ne(order(1), order(2))

def test_class_names_and_ordinal(tmp_path):
    write_npz(tmp_path/'retinamnist.npz', k=5)
    dls = medmnist_dls(tmp_path/'retinamnist.npz', bs=8)
    fct.test_eq(dls.vocab, ['0', '1', '2', '3', '4'])
    assert dls.ordinal and is_ordinal(dls) and is_ordinal('retinamnist_128.npz')
    r = dls.resampled(0)  # the attributes survive resampling
    assert r.ordinal and r.test is dls.test
    write_npz(tmp_path/'dermamnist_jpeg28.npz', k=7)
    d = medmnist_dls(tmp_path/'dermamnist_jpeg28.npz', bs=8)
    fct.test_eq(d.vocab, ['akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc'])
    assert not d.ordinal and not is_ordinal(d)
    fct.test_eq(medmnist_dls(tmp_path/'dermamnist_jpeg28.npz', bs=8, class_names=list('abcdefg')).vocab, list('abcdefg'))
    fct.test_fail(lambda: medmnist_dls(tmp_path/'dermamnist_jpeg28.npz', class_names=['x', 'y']), contains='only 2 class_names')

def test_no_test_loader():
    x, y = rand_split(16)
    dls = arrays_dls({'train': (x, y), 'valid': (x, y)}, bs=4)
    fct.test_eq(len(dls.loaders), 2)
    assert not hasattr(dls, 'test')
    fct.test_fail(lambda: dls.test, exc=AttributeError, contains="2 loaders, so no test loader (dls[2]): give a 'test' split")
    fct.test_fail(lambda: dls.no_such_name, exc=AttributeError)  # other names go on to fastai's lookup in dls.train
    fct.test_eq((dls.c, dls.bs), (dls.train.c, 4))
    again = pickle.loads(pickle.dumps(dls))
    fct.test_eq((len(again.loaders), again.vocab), (2, dls.vocab))
    fct.test_fail(lambda: arrays_dls({'train': (x, y)}), contains="must have 'train' and 'valid'")


# --- bad input --------------------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as e: medmnist_dls(tmp_path/'nope.npz')
    assert 'nope.npz' in str(e.value) and 'BMX_DATA' in str(e.value)

def test_unreadable_files(tmp_path):
    arrs = write_npz(tmp_path/'ok.npz')
    (tmp_path/'text.npz').write_text('hello, not an archive')
    (tmp_path/'trunc.npz').write_bytes((tmp_path/'ok.npz').read_bytes()[:2000])
    np.save(tmp_path/'single.npy', arrs['train_images'])
    for f in ('text.npz', 'trunc.npz', 'single.npy'):
        fct.test_fail(lambda: medmnist_dls(tmp_path/f), contains='is not a readable .npz')

def test_missing_keys(tmp_path):
    arrs = write_npz(tmp_path/'ok.npz')
    np.savez(tmp_path/'m.npz', **{k: v for k, v in arrs.items() if k not in ('val_images', 'test_labels')})
    with pytest.raises(ValueError) as e: medmnist_dls(tmp_path/'m.npz')
    msg = str(e.value)
    assert "lacks the key(s) ['val_images', 'test_labels']" in msg
    assert all(k in msg for k in MEDMNIST_KEYS)

@pytest.mark.parametrize('key,value,msg', [
    ('train_images', np.zeros((40, 28, 28, 3), np.float32), 'expected uint8 images of shape (N, H, W)'),
    ('train_images', np.zeros((40, 28, 28, 3, 1), np.uint8), 'expected uint8 images of shape (N, H, W)'),
    ('train_images', np.zeros((40, 28), np.uint8), 'expected uint8 images of shape (N, H, W)'),
    ('train_images', np.zeros((40, 28, 28, 4), np.uint8), 'expected uint8 images of shape (N, H, W)'),
    ('train_labels', np.zeros((40, 14), np.uint8), 'multi-label task (like ChestMNIST)'),
    ('train_labels', np.zeros((40, 1), np.float32), 'regression'),
    ('val_labels', np.zeros((7, 1), np.uint8), 'valid has 10 images but 7 labels'),
    ('test_images', np.zeros((20, 32, 32, 3), np.uint8), 'different image shapes'),
    ('test_images', np.zeros((20, 28, 28), np.uint8), 'different image shapes'),
])
def test_bad_arrays(tmp_path, key, value, msg):
    arrs = write_npz(tmp_path/'ok.npz')
    np.savez(tmp_path/'bad.npz', **{**arrs, key: value})
    fct.test_fail(lambda: medmnist_dls(tmp_path/'bad.npz'), contains=msg)
    fct.test_fail(lambda: load_medmnist(tmp_path/'bad.npz'), contains=msg)

def test_bmx_data(tmp_path, monkeypatch):
    monkeypatch.setenv('BMX_DATA', str(tmp_path))
    fct.test_eq(bmx_data(), tmp_path)
    (tmp_path/'x.npz').write_bytes(b'')
    fct.test_eq(bmx_data('x.npz'), tmp_path/'x.npz')
    with pytest.raises(FileNotFoundError, match='BMX_DATA'): bmx_data('y.npz')
    monkeypatch.setenv('BMX_DATA', str(tmp_path/'absent'))
    with pytest.raises(FileNotFoundError, match='BMX_DATA'): bmx_data()
    monkeypatch.delenv('BMX_DATA')
    (tmp_path/'proj'/'sub').mkdir(parents=True)
    (tmp_path/'shared'/'data').mkdir(parents=True)
    monkeypatch.chdir(tmp_path/'proj'/'sub')
    fct.test_eq(bmx_data().resolve(), (tmp_path/'shared'/'data').resolve())


# --- labels without inputs --------------------------------------------------------------------------------------

class Untouchable:
    def __getitem__(self, i): raise RuntimeError('an input was read')

def test_labels_without_inputs(tmp_path):
    arrs = write_npz(tmp_path/'l.npz', k=5)
    dls = medmnist_dls(tmp_path/'l.npz', bs=8)
    dls.train.dataset.tls[0].tfms[0].images = Untouchable()  # the one tensor all splits read their pixels from
    fct.test_eq(get_labels(dls.train), arrs['train_labels'][:, 0])
    fct.test_eq(get_labels(dls.test), arrs['test_labels'][:, 0])
    fct.test_fail(lambda: dls.train.one_batch(), contains='an input was read')

def test_folder_and_df_labels_without_images(tmp_path):
    from PIL import Image
    from fastai.vision.all import ImageDataLoaders, Resize, get_image_files
    g = np.random.default_rng(0)
    for cls, n in (('a', 9), ('b', 4), ('c', 4)):
        (tmp_path/cls).mkdir()
        for i in range(n): Image.fromarray(g.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(tmp_path/cls/f'{i}.png')
    files = get_image_files(tmp_path)
    df = pd.DataFrame({'fname': [str(f.relative_to(tmp_path)) for f in files], 'label': [f.parent.name for f in files]})
    folder = ImageDataLoaders.from_folder(tmp_path, valid_pct=0.25, seed=0, item_tfms=Resize(8), bs=2)
    frame = ImageDataLoaders.from_df(df, tmp_path, valid_pct=0.25, seed=0, item_tfms=Resize(8), bs=2)
    for f in files: f.unlink()
    for d in (folder, frame):
        y = np.concatenate([get_labels(d.train), get_labels(d.valid)])
        fct.test_eq(np.bincount(y), [9, 4, 4])
        fct.test_eq(d.vocab, ['a', 'b', 'c'])


# --- digits default ---------------------------------------------------------------------------------------------

def test_longtail_counts():
    fct.test_eq(longtail_counts(1000, 3, 100), [1000, 100, 10])
    fct.test_eq(longtail_counts(8, 4, 8), [8, 4, 2, 1])
    fct.test_fail(lambda: longtail_counts(10, 3, 0.5), contains='>= 1')
    fct.test_fail(lambda: longtail_counts(10, 1, 2), contains='at least 2 classes')

@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5000), st.integers(2, 50), st.floats(1, 1000))
def test_longtail_counts_props(n_max, c, rho):
    n = longtail_counts(n_max, c, rho)
    assert len(n) == c and n[0] == n_max and (np.diff(n) <= 0).all() and n.min() >= 1
    fct.test_close(n[-1], max(1, round(n_max / rho)), eps=1)

def test_digits_dls():
    from sklearn.datasets import load_digits
    n_max = np.bincount(load_digits().target).min()
    dls = digits_dls(bs=32)
    counts = np.stack([np.bincount(get_labels(dl), minlength=10) for dl in dls.loaders])
    fct.test_eq(counts.sum(0), [round(n_max * 10 ** (-j / 9)) for j in range(10)])  # n_j = n_max * 10^(-j/9)
    n = counts.sum()
    n_test = math.ceil(0.2 * n); n_valid = math.ceil(0.2 / 0.8 * (n - n_test))  # sklearn rounds test sizes up
    fct.test_eq(counts.sum(1), [n - n_test - n_valid, n_valid, n_test])
    assert (counts >= 1).all()  # every class in every split (stratified)
    fct.test_close(counts[0] / counts.sum(0), 0.6, eps=0.06)
    fct.test_eq(dls.vocab, [str(i) for i in range(10)])
    x, y = dls.train.one_batch()
    fct.test_eq((x.shape, x.dtype), ((32, 3, 32, 32), torch.float32))
    x8 = digits_dls(size=None, bs=16).valid.one_batch()[0]
    fct.test_eq(x8.shape, (16, 3, 8, 8))
    # the digits pixels, scaled 0..16 -> 0..255, are what the valid loader holds (before normalisation)
    spl = digits_splits()
    fct.test_eq(spl['train'][0].dtype, np.uint8)
    fct.test_close(x8.numpy(), np_normalised(spl['valid'][0][:16], spl['train'][0]).repeat(3, 1), eps=1e-4)
    fct.test_fail(lambda: digits_dls(imbalance=50), contains='use imbalance <= 34')

def test_digits_reproducible():
    a, b, c = digits_splits(seed=0), digits_splits(seed=0), digits_splits(seed=1)
    fct.test_eq(a['test'][1], b['test'][1])
    assert not np.array_equal(a['train'][0], c['train'][0])


# --- real data --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('fname,sizes,counts,vocab', [
    ('retinamnist.npz', [1080, 120, 400], [486, 128, 206, 194, 66], ['0', '1', '2', '3', '4']),
    ('dermamnist_jpeg28.npz', [7007, 1003, 2005], [228, 359, 769, 80, 779, 4693, 99],
     ['akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc']),
])
def test_real_data(real_data, fname, sizes, counts, vocab):
    p = real_data(fname)
    spl = load_medmnist(p)
    fct.test_eq([len(spl[k][0]) for k in ('train', 'valid', 'test')], sizes)
    for k in spl: fct.test_eq(spl[k][0].shape[1:], (28, 28, 3))
    dls = medmnist_dls(p, bs=64, seed=0)
    fct.test_eq([len(dl.dataset) for dl in dls.loaders], sizes)
    fct.test_eq(np.bincount(get_labels(dls.train)), counts)
    fct.test_eq(dls.vocab, vocab)
    assert dls.ordinal == ('retina' in fname)
    x, y = dls.train.one_batch()
    fct.test_eq((x.shape, x.dtype, y.shape, y.dtype), ((64, 3, 28, 28), torch.float32, (64,), torch.int64))
    assert (x.mean((0, 2, 3)).abs() < 0.35).all() and ((x.std((0, 2, 3)) - 1).abs() < 0.3).all()
    # over the whole (unaugmented) training split, each channel has mean 0 and std 1 exactly
    full = medmnist_dls(p, bs=len(spl['train'][0]), batch_tfms=[], shuffle=False, drop_last=False).train.one_batch()[0]
    fct.test_close(full.mean((0, 2, 3)), torch.zeros(3), eps=1e-3)
    fct.test_close(full.std((0, 2, 3)), torch.ones(3), eps=1e-3)
    fct.test_close(full.numpy(), np_normalised(spl['train'][0], spl['train'][0]), eps=1e-4)


# --- image files: folder_dls, csv_dls, frame_dls -------------------------------------------------------------------

def _png_table(root, counts={'train': (8, 3), 'valid': (2, 2), 'test': (2, 1)}):
    from PIL import Image
    g, rows = np.random.default_rng(0), []
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in counts.items():
        for cls, n in zip(('a', 'b'), per_class):
            for i in range(n):
                fn = f'{split}_{cls}_{i}.png'
                Image.fromarray(g.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(root/fn)
                rows.append((fn, cls, split))
    return pd.DataFrame(rows, columns=['fname', 'label', 'split'])


def test_csv_dls_splits_and_labels(tmp_path):
    df = _png_table(tmp_path)
    df.to_csv(tmp_path/'labels.csv', index=False)
    dls = csv_dls(tmp_path/'labels.csv', size=8, bs=4, seed=0)
    fct.test_eq([len(dl.dataset) for dl in dls.loaders], [11, 4, 3])
    fct.test_eq(np.bincount(get_labels(dls.train)), [8, 3])
    fct.test_eq(get_labels(dls.test).tolist(), [0, 0, 1])
    xb, yb = dls.valid.one_batch()
    fct.test_eq(xb.shape, (4, 3, 8, 8))
    assert not is_ordinal(dls)
    assert is_ordinal(frame_dls(df, tmp_path, size=8, ordinal=True))


def test_integer_labels_sort_numerically(tmp_path):
    df = _png_table(tmp_path)
    df['label'] = df.label.map({'a': 10, 'b': 2})
    dls = frame_dls(df, tmp_path, size=8)
    fct.test_eq(list(dls.vocab), ['2', '10'])


@pytest.mark.parametrize('change, msg', [
    (lambda d: d.assign(label=np.where(d.index % 2, 0.5, 1.5)), 'regression'),
    (lambda d: d.assign(label='a|b'), 'multi-label'),
    (lambda d: d.assign(label=[None] + list(d.label[1:])), 'missing'),
    (lambda d: d.rename(columns={'fname': 'path'}), 'fn_col'),
    (lambda d: d.assign(split=d.split.replace('valid', 'dev')), "'dev'"),
    (lambda d: d.assign(label=np.where(d.split == 'test', 'c', d.label)), r"Test labels \['c'\] never occur"),
    (lambda d: d[d.label == 'a'], 'one class'),
    (lambda d: d.iloc[:0], 'no rows'),
])
def test_bad_tables_fail_before_any_image_is_read(tmp_path, change, msg):
    df = _png_table(tmp_path)
    for f in tmp_path.glob('*.png'): f.unlink()  # the error must come from the table alone
    with pytest.raises(ValueError, match=msg): frame_dls(change(df), tmp_path, size=8)


def test_folder_dls_needs_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='is not a folder'): folder_dls(tmp_path/'nope')
    (tmp_path/'empty').mkdir()
    with pytest.raises(ValueError, match='No image files'): folder_dls(tmp_path/'empty')


# --- image files decoded once, served from memory ------------------------------------------------------------------

def test_decoded_pixels_are_fastais_validation_resize(tmp_path):
    "Non-square and square images: decode_images gives the pixels of fastai's PILImage + Resize(size) in validation"
    from PIL import Image
    from fastai.vision.core import PILImage
    from fastai.vision.augment import Resize
    from fastai_bmx.files import decode_images
    g = np.random.default_rng(1)
    shapes = [(30, 45), (45, 30), (24, 24), (17, 61), (8, 8)]
    paths = []
    for i, (h, w) in enumerate(shapes):
        paths.append(tmp_path/f'{i}.png')
        Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    Image.fromarray(g.integers(0, 256, (20, 20), dtype=np.uint8)).save(tmp_path/'gray.png'); paths.append(tmp_path/'gray.png')
    for size in (12, 16):
        got = decode_images(paths, size, workers=2, chunk=2)
        fct.test_eq(got.shape, (len(paths), size, size, 3))
        for p, x in zip(paths, got):
            want = np.asarray(Resize(size)(PILImage.create(p), split_idx=1))
            fct.test_eq(x, want)


def test_a_file_that_does_not_decode_is_named(tmp_path):
    from fastai_bmx.files import decode_images
    (tmp_path/'bad.png').write_bytes(b'nope')
    with pytest.raises(ValueError, match=r"1 of 1 image files can't be decoded: .*bad.png"): decode_images([tmp_path/'bad.png'], 8)


@pytest.mark.parametrize('fold', [None, 1])
def test_memory_and_files_give_the_same_loaders_and_batches(tmp_path, fold):
    "Square images: the same items, labels and batches (augmentations included) from memory as from the files"
    from fastai.torch_core import set_seed
    df = _png_table(tmp_path)
    def loaders(in_memory):
        set_seed(0)
        d = frame_dls(df, tmp_path, size=8, bs=4, seed=0, in_memory=in_memory, fold=fold, k=3)
        return d, [d.one_batch(), *(next(iter(dl)) for dl in d.loaders[1:]), d.resampled(0.).one_batch()]
    (dm, bm), (dd, bd) = loaders(True), loaders(False)
    fct.test_eq([len(dl.dataset) for dl in dm.loaders], [len(dl.dataset) for dl in dd.loaders])
    fct.test_eq(list(dm.vocab), list(dd.vocab))
    for a, b in zip(dm.loaders, dd.loaders): fct.test_eq(get_labels(a).tolist(), get_labels(b).tolist())
    for (xm, ym), (xd, yd) in zip(bm, bd):
        fct.test_eq(ym, yd)
        fct.test_close(xm, xd, eps=1e-5)


def test_fits_in_memory_is_three_copies_in_half_of_what_is_free():
    from fastai_bmx.files import fits_in_memory
    n, size = 1000, 64  # 12.3 MB of images
    need = 3 * n * size * size * 3
    assert fits_in_memory(n, size, available=2 * need) and not fits_in_memory(n, size, available=2 * need - 2)
    assert fits_in_memory(n, size)  # this machine has the memory for 12 MB


def test_real_ham10000_csv_decoded_once(real_data):
    "The dermoscopy CSV as a user gives it: its splits and class counts (the data README's table), from memory"
    dls = csv_dls(real_data('ham10000_224/labels.csv'), size=16, bs=64, seed=0)
    fct.test_eq([len(dl.dataset) for dl in dls.loaders], [5086, 898, 1512])
    fct.test_eq(list(dls.vocab), ['akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc'])
    fct.test_eq(np.bincount(get_labels(dls.train)).tolist(), [156, 224, 496, 51, 417, 3674, 68])
    fct.test_eq(np.bincount(get_labels(dls.test)).tolist(), [43, 93, 217, 44, 171, 909, 35])
    assert type(dls.train.dataset.tls[0].fs[0]).__name__ == 'IndexedImage'  # served from memory
    fct.test_eq(dls.train.one_batch()[0].shape, (64, 3, 16, 16))
