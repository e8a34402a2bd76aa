"""Overhead of Balanced-MixUp: wall time per training epoch against plain training and fastai's `MixUp`.

    python bench/overhead.py [--rounds 3] [--threads 1]

Two cases, each measured in one process with the methods alternating round by round (so drift in a shared machine's
load hits them all alike); the figure is the median epoch time over the rounds:
- model-bound: in-memory uint8 images (`arrays_dls`, 28 px RGB, 2,048 items), a ResNet-18, `num_workers=0`;
- data-bound: PNG files on disk read and resized by item transforms in 2 worker processes (`ImageDataLoaders.from_folder`,
  64 px files resized to 48 px, 1,024 items), with a tiny CNN, so loading dominates.
In the data-bound case the partner loader is a copy of the training loader (`dl.new`), so it keeps `num_workers` and
prefetches in worker processes like the main one. Every run uses `pretrained=False` and `bs=64`.
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

METHODS = {'plain': lambda: [], 'fastai MixUp(0.4)': lambda: [MixUp(0.4)], 'BalancedMixUp(0.2)': lambda: [BalancedMixUp(0.2)]}


def longtail_labels(n, k=5, seed=0):
    c = longtail_counts(n, k, 20.); c = np.maximum(1, np.round(c * n / c.sum())).astype(int)
    y = np.repeat(np.arange(k), c)[:n]
    return np.random.default_rng(seed).permutation(np.pad(y, (0, n - len(y)), constant_values=0))


def model_bound_dls(n=2048):
    g = np.random.default_rng(0)
    split = lambda m, s: (np.random.default_rng(s).integers(0, 256, (m, 28, 28, 3), dtype=np.uint8), longtail_labels(m, seed=s))
    return arrays_dls({'train': split(n, 0), 'valid': split(256, 1)}, bs=64, seed=0, batch_tfms=[])


def data_bound_dls(root, n=1024):
    y = longtail_labels(n)
    g = np.random.default_rng(0)
    for i, c in enumerate(y):
        (root/'train'/str(c)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root/'train'/str(c)/f'{i}.png')
        if i < 128:
            (root/'valid'/str(c)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(g.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root/'valid'/str(c)/f'{i}.png')
    return ImageDataLoaders.from_folder(root, item_tfms=Resize(48), bs=64, num_workers=2, seed=0)


def tiny_cnn(k):
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, k))


def epoch_time(make_learn, cbs):
    set_seed(0)
    learn = make_learn(cbs)
    learn.remove_cb(ProgressCallback)
    with learn.no_logging(): learn.fit(1, 1e-3)  # warm-up: partner loader built, workers started, caches warm
    t = time.perf_counter()
    with learn.no_logging(): learn.fit(1, 1e-3)
    return time.perf_counter() - t


def bench(name, make_learn, rounds):
    times = {m: [] for m in METHODS}
    for r in range(rounds):
        order = list(METHODS) if r % 2 == 0 else list(METHODS)[::-1]
        for m in order: times[m].append(epoch_time(make_learn, METHODS[m]()))
    med = {m: statistics.median(t) for m, t in times.items()}
    print(f"\n{name}: median seconds per epoch over {rounds} rounds (all rounds: {', '.join(f'{m} {[round(x, 2) for x in t]}' for m, t in times.items())})")
    for m, t in med.items(): print(f"  {m:<20} {t:7.2f} s")
    b = med['BalancedMixUp(0.2)']
    print(f"  BalancedMixUp / plain = {b / med['plain']:.2f}, BalancedMixUp / fastai MixUp = {b / med['fastai MixUp(0.4)']:.2f}")


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--threads', type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dls = model_bound_dls()
    bench('model-bound (ResNet-18, in-memory 28 px images, num_workers=0)',
          lambda cbs: vision_learner(dls, 'resnet18', pretrained=False, cbs=cbs), args.rounds)
    with tempfile.TemporaryDirectory() as d:
        fdls = data_bound_dls(Path(d))
        bench('data-bound (tiny CNN, PNG files resized by item transforms, num_workers=2)',
              lambda cbs: Learner(fdls, tiny_cnn(len(fdls.vocab)), loss_func=CrossEntropyLossFlat(), cbs=cbs), args.rounds)
