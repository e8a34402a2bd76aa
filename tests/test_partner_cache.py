"The partner loader's item cache: same pixels with and without it, smallest classes first within its bound, off at 0, none for in-memory data"
import random
import numpy as np, torch, pytest
from PIL import Image
from torch import nn
import fastcore.test as fct
from fastai.data.core import Datasets
from fastai.data.transforms import Categorize, get_image_files, parent_label
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.torch_core import set_seed
from fastai.vision.core import PILImage
from fastai.vision.data import ImageDataLoaders
from fastai.vision.augment import Resize
from fastai_bmx.sampling import ResampledDL, resampled_dl, get_labels
from fastai_bmx.item_cache import class_item_cache, item_nbytes, in_memory, default_cache_mb
from fastai_bmx.mixup import BalancedMixUp
from fastai_bmx.data import arrays_dls


def png_folder(root, counts, size=(16, 16), seed=0):
    "A folder of class folders of random RGB PNG files, `counts[name]` files in class `name`, `size` = (width, height)"
    g = np.random.default_rng(seed)
    for cls, n in counts.items():
        (root/cls).mkdir(parents=True)
        for i in range(n): Image.fromarray(g.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root/cls/f'{i}.png')
    return root


def image_dls(root, num_workers=0, bs=8):
    "Training loader over the files: 20% validation, random crops of 16 px (`Resize`) as item transforms"
    return ImageDataLoaders.from_folder(root, valid_pct=0.2, seed=0, item_tfms=Resize(16), bs=bs, num_workers=num_workers)


def passes(dl, n=2, seed=1):
    set_seed(seed)
    return [b for _ in range(n) for b in dl]


def classes_of(cache, labels): return sorted({int(labels[i]) for i in cache})


@pytest.mark.parametrize('num_workers', [0, 2])
def test_same_pixels_with_and_without_cache(tmp_path, num_workers):
    dls = image_dls(png_folder(tmp_path, {'a': 24, 'b': 6, 'c': 3}, size=(24, 18)), num_workers)  # not square: crops move
    plain, cached = resampled_dl(dls.train, 0, cache_mb=0), resampled_dl(dls.train, 0, cache_mb=None)
    assert plain.item_cache == {} and len(cached.item_cache) == len(dls.train_ds)
    with_, without = passes(cached), passes(plain)
    assert len(with_) == len(without) == 2*len(plain)
    for (x0, y0), (x1, y1) in zip(without, with_): fct.test_eq(x1, x0); fct.test_eq(y1, y0)
    # the cache holds items before the item transforms, so the random crops of a cached item still differ
    item = cached.item_cache[0]
    crops = [cached.after_item(item)[0] for _ in range(8)]
    assert any(not torch.equal(crops[0], c) for c in crops[1:])


def test_cached_items_are_not_read_again_in_workers(tmp_path):
    root = png_folder(tmp_path, {'a': 20, 'b': 8, 'c': 4})
    dls = image_dls(root, num_workers=2)
    labels = get_labels(dls.train)
    smallest = int(np.argmin(np.bincount(labels)))
    bound = item_nbytes(dls.train_ds[0]) * (labels == smallest).sum() / 2**20
    partner = resampled_dl(dls.train, 0, cache_mb=bound)  # room for the smallest class only
    fct.test_eq(classes_of(partner.item_cache, labels), [smallest])
    for f in (root/dls.vocab[smallest]).iterdir(): f.unlink()
    drawn = torch.cat([y for _, y in passes(partner)])  # forked workers inherit the cache: no file of that class is opened
    assert (drawn == smallest).any()


def test_cache_holds_the_smallest_classes_within_its_bound(tmp_path):
    png_folder(tmp_path, {'a': 12, 'b': 3, 'c': 7, 'd': 5})  # 16 x 16 RGB: 1,024 bytes each in PIL
    dsets = Datasets(get_image_files(tmp_path), [[PILImage.create], [parent_label, Categorize()]])
    labels = get_labels(dsets)
    fct.test_eq(item_nbytes(dsets[0]), 16*16*4 + 8)
    per_item = item_nbytes(dsets[0])
    for n_items, classes in ((3, [1]), (8, [1, 3]), (14, [1, 3]), (15, [1, 2, 3]), (27, [0, 1, 2, 3])):
        cache = class_item_cache(dsets, labels, cache_mb=n_items*per_item/2**20)
        fct.test_eq(classes_of(cache, labels), classes)
        assert sum(item_nbytes(o) for o in cache.values()) <= n_items*per_item
        fct.test_eq(sorted(cache), sorted(np.flatnonzero(np.isin(labels, classes)).tolist()))  # whole classes only
        for i, o in cache.items(): fct.test_eq(np.array(o[0]), np.array(dsets[i][0]))
    assert class_item_cache(dsets, labels, cache_mb=2*per_item/2**20) == {}  # not even the smallest class fits
    assert len(class_item_cache(dsets, labels, n_workers=2)) == len(dsets) and default_cache_mb() > 0


def test_zero_disables_the_cache(tmp_path):
    dls = image_dls(png_folder(tmp_path, {'a': 10, 'b': 4}))
    assert resampled_dl(dls.train, 0).item_cache == {}  # off by default for a resampled training loader
    assert resampled_dl(dls.train, 0, cache_mb=0).item_cache == {}
    assert len(resampled_dl(dls.train, 0, cache_mb=None).item_cache) == len(dls.train_ds)
    cb = BalancedMixUp(0.2, cache_mb=0)
    learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(3*16*16, 2)), loss_func=CrossEntropyLossFlat(), cbs=cb)
    learn.remove_cb(ProgressCallback)
    with learn.no_logging(): learn.fit(1)
    assert isinstance(cb.partner_dl, ResampledDL) and cb.partner_dl.item_cache == {}
    with pytest.raises(ValueError, match='must be a number of MiB'): BalancedMixUp(0.2, cache_mb=-1)
    with pytest.raises(ValueError, match='must be a number of MiB'): resampled_dl(dls.train, 0, cache_mb=float('nan'))


def test_in_memory_loaders_are_not_cached():
    g = np.random.default_rng(0)
    y = np.repeat(np.arange(3), [20, 6, 2])
    dls = arrays_dls({'train': (g.integers(0, 256, (28, 8, 8, 3), dtype=np.uint8), y),
                      'valid': (g.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), y[:6])}, bs=4, batch_tfms=[])
    assert in_memory(dls.train.dataset)
    assert resampled_dl(dls.train, 0, cache_mb=None).item_cache == {}
    # detected from two items: the rest are never read
    images, reads = torch.zeros(50, 3, 4, 4), []
    def read(i): reads.append(i); return images[i]
    dsets = Datasets(list(range(50)), [[read], [lambda i: i % 2]])
    reads.clear()  # building the `Datasets` reads item 0 to set its transforms up
    assert class_item_cache(dsets, np.arange(50) % 2) == {}
    fct.test_eq(reads, [0, 1])


class PartnerLog(Callback):
    "Keep every step's partner batch"
    order,run_valid = 1,False  # after BalancedMixUp's `before_batch`, in training only
    def before_fit(self): self.xs, self.ys = [], []
    def before_batch(self): self.xs.append(self.balanced_mix_up.xb1[0].clone()); self.ys.append(self.balanced_mix_up.yb1[0].clone())


def test_training_with_workers_and_the_cache(tmp_path):
    dls = image_dls(png_folder(tmp_path, {'a': 30, 'b': 8, 'c': 4}, size=(20, 16)), num_workers=2)
    def train(cache_mb):
        set_seed(0); dls.train.rng = random.Random(0)  # the training loader's own shuffling state, which `set_seed` leaves alone
        learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(3*16*16, 3)), loss_func=CrossEntropyLossFlat(),
                        cbs=[BalancedMixUp(0.2, cache_mb=cache_mb), PartnerLog()])
        learn.remove_cb(ProgressCallback)
        with learn.no_logging(): learn.fit(2, 1e-2)
        return learn
    cached, plain = train(None), train(0)
    assert len(cached.balanced_mix_up.partner_dl.item_cache) == len(dls.train_ds)
    assert plain.balanced_mix_up.partner_dl.item_cache == {}
    assert len(cached.partner_log.xs) == 2*len(dls.train) > 0
    for a, b in zip(cached.partner_log.xs, plain.partner_log.xs): fct.test_eq(a, b)
    for a, b in zip(cached.partner_log.ys, plain.partner_log.ys): fct.test_eq(a, b)
    for p, q in zip(cached.model.parameters(), plain.model.parameters()): fct.test_eq(p, q)
    assert np.isfinite(cached.recorder.losses[-1].item())


def test_files_read_every_epoch_are_the_decoded_images_at_the_models_size(tmp_path):
    "`folder_dls(in_memory=False)` resizes each file as it reads it, as decoding once does: same items, and a cache of small ones"
    from fastai_bmx.files import folder_dls, decode_images
    root = png_folder(tmp_path, {'a': 12, 'b': 5, 'c': 3}, size=(40, 30))  # not square: the crop is the centred one
    disk = folder_dls(root, in_memory=False, size=16, bs=4, batch_tfms=[], num_workers=0)
    mem = folder_dls(root, in_memory=True, size=16, bs=4, batch_tfms=[])
    ds = disk.train_ds
    paths = [root/f for f in ds.items['fname']]
    fct.test_eq(np.stack([np.asarray(ds[i][0]) for i in range(len(ds))]), decode_images(paths, 16, workers=1))
    for (xd, yd), (xm, ym) in zip(disk.valid, mem.valid): fct.test_eq(xd, xm); fct.test_eq(yd, ym)  # the same valid batches
    partner = resampled_dl(disk.train, 0, cache_mb=None)
    assert len(partner.item_cache) == len(ds)  # every class fits
    assert all(o[0].size == (16, 16) for o in partner.item_cache.values())  # held at the model's size, not the file's
    fct.test_eq(item_nbytes(partner.item_cache[0][:1]), 16*16*4)  # PIL keeps RGB in 4 bytes a pixel
