"""Overhead of Balanced-MixUp: wall time per training epoch against plain training and fastai's `MixUp`.

    python bench/overhead.py [--rounds 3] [--threads 1] [--cases model data] [--file-px 64] [--file-format png] [--loader fastai]

Two cases, each measured in one process with the methods alternating round by round (so drift in a shared machine's
load hits them all alike); the figure is the median epoch time over the rounds. Each ratio is given three ways: of the
medians, the median of the rounds' own ratios, and of the fastest epochs (the least disturbed, on a shared machine):
- model-bound: in-memory uint8 images (`arrays_dls`, 28 px RGB, 2,048 items), a ResNet-18, `num_workers=0`;
- data-bound: image files on disk read and resized by item transforms in 2 worker processes (`ImageDataLoaders.from_folder`,
  64 px PNG files resized to 48 px, 1,024 items in 5 long-tailed classes, 553 to 28 items), with a tiny CNN, so loading
  dominates. `--file-px` and `--file-format` change the files (e.g. `--file-px 256 --file-format jpg`); `--file-format dcm`
  writes 16-bit grey DICOM files (pydicom's CT_small.dcm with random pixels). `--loader bmx` reads the files with
  `folder_dls(in_memory=False)`, as `bmx-compare --from-disk` does: `read_pixels` (for DICOM the rescale and the window)
  and the resize to 48 px as each file is read, so the item is already the model's size; DICOM files are always read so
  (fastai can't read them): the case of the issue, DICOM X-rays read from disk every epoch (`--file-px 512 --file-format dcm`).
In the data-bound case the partner loader is a copy of the training loader (`dl.new`), so it keeps `num_workers` and
prefetches in worker processes like the main one. The case runs BalancedMixUp twice: with the partner's item cache
(the default, `cache_mb=None`: the decoded files of the smallest classes kept in memory, here all of them) and without
it (`cache_mb=0`: every partner item is read from its file again). The model-bound data is in memory, so it gets no
cache. Every run uses `pretrained=False` and `bs=64`.
"""
import argparse, statistics, tempfile, time, warnings
warnings.filterwarnings('ignore')
from pathlib import Path
import numpy as np, torch
from torch import nn
from PIL import Image
from fastai.vision.all import (vision_learner, Learner, ImageDataLoaders, Resize, MixUp, CrossEntropyLossFlat, set_seed,
                               ProgressCallback)
from fastai_bmx.mixup import BalancedMixUp
from fastai_bmx.data import arrays_dls, longtail_counts

BMX = 'BalancedMixUp(0.2)'
METHODS = {'plain': lambda: [], 'fastai MixUp(0.4)': lambda: [MixUp(0.4)], BMX: lambda: [BalancedMixUp(0.2)]}
NO_CACHE = 'BalancedMixUp(0.2, cache_mb=0)'
DATA_METHODS = {**METHODS, NO_CACHE: lambda: [BalancedMixUp(0.2, cache_mb=0)]}


def longtail_labels(n, k=5, seed=0):
    c = longtail_counts(n, k, 20.); c = np.maximum(1, np.round(c * n / c.sum())).astype(int)
    y = np.repeat(np.arange(k), c)[:n]
    return np.random.default_rng(seed).permutation(np.pad(y, (0, n - len(y)), constant_values=0))


def model_bound_dls(n=2048):
    g = np.random.default_rng(0)
    split = lambda m, s: (np.random.default_rng(s).integers(0, 256, (m, 28, 28, 3), dtype=np.uint8), longtail_labels(m, seed=s))
    return arrays_dls({'train': split(n, 0), 'valid': split(256, 1)}, bs=64, seed=0, batch_tfms=[])


def write_dicom(path, pixels):
    "A 16-bit grey DICOM file with `pixels`, from the tags of pydicom's CT test file (rescale and window included)"
    import pydicom
    from pydicom.data import get_testdata_file
    ds = pydicom.dcmread(get_testdata_file('CT_small.dcm'))
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.save_as(path)


def data_bound_dls(root, n=1024, px=64, fmt='png', loader='fastai'):
    y = longtail_labels(n)
    g = np.random.default_rng(0)
    def write(path):
        if fmt == 'dcm': write_dicom(path, g.integers(0, 2000, (px, px)))
        else: Image.fromarray(g.integers(0, 256, (px, px, 3), dtype=np.uint8)).save(path)
    for i, c in enumerate(y):
        (root/'train'/str(c)).mkdir(parents=True, exist_ok=True)
        write(root/'train'/str(c)/f'{i}.{fmt}')
        if i < 128:
            (root/'valid'/str(c)).mkdir(parents=True, exist_ok=True)
            write(root/'valid'/str(c)/f'{i}.{fmt}')
    if fmt == 'dcm' or loader == 'bmx':
        from fastai_bmx.files import folder_dls
        return folder_dls(root, in_memory=False, size=48, bs=64, num_workers=2, seed=0, batch_tfms=[])
    return ImageDataLoaders.from_folder(root, item_tfms=Resize(48), bs=64, num_workers=2, seed=0)


def tiny_cnn(k):
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, k))


def epoch_time(make_learn, cbs):
    set_seed(0)
    learn = make_learn(cbs)
    learn.remove_cb(ProgressCallback)
    with learn.no_logging(): learn.fit(1, 1e-3)  # warm-up: partner loader (and its item cache) built, workers started
    t = time.perf_counter()
    with learn.no_logging(): learn.fit(1, 1e-3)
    return time.perf_counter() - t


def bench(name, make_learn, rounds, methods=METHODS):
    times = {m: [] for m in methods}
    for r in range(rounds):
        order = list(methods) if r % 2 == 0 else list(methods)[::-1]
        for m in order: times[m].append(epoch_time(make_learn, methods[m]()))
    med = {m: statistics.median(t) for m, t in times.items()}
    print(f"\n{name}: median seconds per epoch over {rounds} rounds (all rounds: {', '.join(f'{m} {[round(x, 2) for x in t]}' for m, t in times.items())})")
    for m, t in med.items(): print(f"  {m:<31} {t:7.2f} s")
    for m in (BMX, NO_CACHE):
        for ref in ('plain', 'fastai MixUp(0.4)'):
            if m not in med: continue
            rounds_ratio = statistics.median(a / b for a, b in zip(times[m], times[ref]))  # within a round, the load is alike
            print(f"  {m} / {ref} = {med[m] / med[ref]:.2f} (medians), {rounds_ratio:.2f} (median of the rounds' ratios), "
                  f"{min(times[m]) / min(times[ref]):.2f} (fastest epochs)")


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--cases', nargs='+', choices=('model', 'data'), default=['model', 'data'], help='which cases to run')
    ap.add_argument('--file-px', type=int, default=64, help='side of the data-bound case\'s image files, in pixels')
    ap.add_argument('--file-format', choices=('png', 'jpg', 'dcm'), default='png', help='format of the data-bound case\'s image files')
    ap.add_argument('--loader', choices=('fastai', 'bmx'), default='fastai',
                    help="fastai: ImageDataLoaders.from_folder with Resize as an item transform; bmx: folder_dls(in_memory=False), resizing as it reads (always for dcm)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if 'model' in args.cases:
        dls = model_bound_dls()
        bench('model-bound (ResNet-18, in-memory 28 px images, num_workers=0)',
              lambda cbs: vision_learner(dls, 'resnet18', pretrained=False, cbs=cbs), args.rounds)
    if 'data' in args.cases:
        with tempfile.TemporaryDirectory() as d:
            fdls = data_bound_dls(Path(d), px=args.file_px, fmt=args.file_format, loader=args.loader)
            how = 'as they are read (folder_dls)' if args.loader == 'bmx' or args.file_format == 'dcm' else 'by item transforms (fastai Resize)'
            bench(f'data-bound (tiny CNN, {args.file_px} px {args.file_format.upper()} files resized to 48 px {how}, num_workers=2)',
                  lambda cbs: Learner(fdls, tiny_cnn(len(fdls.vocab)), loss_func=CrossEntropyLossFlat(), cbs=cbs), args.rounds, DATA_METHODS)
