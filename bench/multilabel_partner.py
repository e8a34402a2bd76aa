"""Cost of the class-aware partner on multi-hot findings: Balanced-MixUp's epoch time, multi-label against single-label.

    python bench/multilabel_partner.py [--rounds 3] [--threads 1] [--items 2048] [--findings 10] [--profile]

Model-bound, as `bench/overhead.py`'s first case: the same in-memory uint8 images (2,048 random 28 px RGB images, and
256 to validate), a ResNet-18 (`pretrained=False`), `num_workers=0`, `bs=64`, no augmentation. Two methods, both
`BalancedMixUp(0.2)`, alternating round by round in one process (so drift in a shared machine's load hits both alike):
- single-label: one class per image (10 long-tailed classes, `arrays_dls`), the class-balanced partner, and the loss
  mixed through fastai's `MixHandler` (cross-entropy on both targets);
- multi-label: 10 long-tailed findings, 1 to 3 per image (the image's class above is always one of them), the same
  images in the same pipeline with a multi-hot target (`EncodedMultiCategorize`), the class-aware partner (a finding
  drawn uniformly, then an image that holds it: `finding_item_probs`) and the multi-hot targets blended
  (`blend_targets`) into `BCEWithLogitsLossFlat`.
The figure is the median epoch time over the rounds (each after a warm-up epoch that builds the partner loader); the
ratio multi / single is given three ways: of the medians, the median of the rounds' own ratios, and of the fastest
epochs. The target is at most 1.05. `--profile` adds a cProfile of one epoch of each, the top functions by own time.
"""
import argparse, cProfile, io, pstats, random, statistics, time, warnings
warnings.filterwarnings('ignore')
import numpy as np, torch
from fastai.vision.all import (vision_learner, Datasets, IntToFloatTensor, Normalize, EncodedMultiCategorize,
                               TensorMultiCategory, Transform, CrossEntropyLossFlat, BCEWithLogitsLossFlat, set_seed,
                               ProgressCallback)
from fastai_bmx.mixup import BalancedMixUp
from fastai_bmx.data import arrays_dls, images_to_tensor, IndexedImage, longtail_counts

STATS = ((.5, .5, .5), (.289, .289, .289))  # of uniform random pixels, so both pipelines normalise alike
SINGLE, MULTI = 'single-label partner', 'multi-label partner'


def longtail_p(k):
    p = longtail_counts(1000, k, 20.)
    return p / p.sum()


def labels_and_findings(n, k, seed):
    "A class per image (long-tailed over `k`), and multi-hot findings: that class and 0 to 2 more, drawn long-tailed"
    g, p = np.random.default_rng(seed), longtail_p(k)
    y = g.choice(k, n, p=p)
    f = np.zeros((n, k), bool)
    f[np.arange(n), y] = True
    for i, m in enumerate(g.choice(3, n, p=[.55, .35, .10])):  # more findings per image: 1 to 3 in all
        if m: f[i, g.choice(k, m, replace=False, p=p)] = True
    return y, f


class IndexedFindings(Transform):
    "Index -> the multi-hot findings row of an in-memory `(N, C)` array"
    def __init__(self, findings): self.findings = torch.as_tensor(findings, dtype=torch.float32)
    def encodes(self, i): return TensorMultiCategory(self.findings[i])


def findings_dls(splits, k, bs=64, seed=0):
    "`arrays_dls` with a multi-hot target: the same images, item indices, batch transforms and loader settings"
    names = ['train', 'valid']
    images = torch.cat([images_to_tensor(splits[s][0]) for s in names])
    findings = np.concatenate([splits[s][1] for s in names])
    n = len(splits['train'][0])
    dsets = Datasets(list(range(len(images))), [[IndexedImage(images)],
                     [IndexedFindings(findings), EncodedMultiCategorize([str(c) for c in range(k)])]],
                     splits=[list(range(n)), list(range(n, len(images)))])
    dls = dsets.dataloaders(bs=bs, num_workers=0, after_batch=[IntToFloatTensor(), Normalize.from_stats(*STATS)])
    dls.train.rng = random.Random(seed)
    return dls


def make_dls(n, k, n_valid=256):
    g = np.random.default_rng(0)
    x = {s: g.integers(0, 256, (m, 28, 28, 3), dtype=np.uint8) for s, m in (('train', n), ('valid', n_valid))}
    t = {s: labels_and_findings(len(x[s]), k, seed) for s, seed in (('train', 0), ('valid', 1))}
    single = arrays_dls({s: (x[s], t[s][0]) for s in x}, bs=64, seed=0, batch_tfms=[], stats=STATS)
    multi = findings_dls({s: (x[s], t[s][1]) for s in x}, k)
    return {SINGLE: (single, CrossEntropyLossFlat()), MULTI: (multi, BCEWithLogitsLossFlat())}, t['train'][1]


def make_learn(dls, loss_func):
    set_seed(0)
    learn = vision_learner(dls, 'resnet18', pretrained=False, loss_func=loss_func, cbs=[BalancedMixUp(0.2)])
    learn.remove_cb(ProgressCallback)
    return learn


def epoch_time(dls, loss_func, profile=None):
    learn = make_learn(dls, loss_func)
    with learn.no_logging(): learn.fit(1, 1e-3)  # warm-up: the partner loader (and its item cache) built
    if profile is not None: profile.enable()
    t = time.perf_counter()
    with learn.no_logging(): learn.fit(1, 1e-3)
    t = time.perf_counter() - t
    if profile is not None: profile.disable()
    return t


def bench(methods, rounds):
    times = {m: [] for m in methods}
    for r in range(rounds):
        for m in (list(methods) if r % 2 == 0 else list(methods)[::-1]): times[m].append(epoch_time(*methods[m]))
    med = {m: statistics.median(t) for m, t in times.items()}
    every = ', '.join(f'{m} {[round(x, 2) for x in t]}' for m, t in times.items())
    print(f"\nmodel-bound (ResNet-18, in-memory 28 px images, num_workers=0), BalancedMixUp(0.2): median seconds per "
          f"epoch over {rounds} rounds (all rounds: {every})")
    for m, t in med.items(): print(f"  {m:<22} {t:7.2f} s")
    rounds_ratio = statistics.median(a / b for a, b in zip(times[MULTI], times[SINGLE]))  # a round's load is alike
    print(f"  {MULTI} / {SINGLE} = {med[MULTI] / med[SINGLE]:.3f} (medians), {rounds_ratio:.3f} (median of the rounds' "
          f"ratios), {min(times[MULTI]) / min(times[SINGLE]):.3f} (fastest epochs); target <= 1.05")


def profile(methods, top=15):
    for m, (dls, lf) in methods.items():
        p = cProfile.Profile()
        t = epoch_time(dls, lf, p)
        s = io.StringIO()
        pstats.Stats(p, stream=s).sort_stats('tottime').print_stats(top)
        print(f"\nprofile of one epoch, {m} ({t:.2f} s), top {top} by own time:")
        print('\n'.join(l for l in s.getvalue().splitlines() if l.strip()[:1].isdigit() or 'ncalls' in l))


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--items', type=int, default=2048, help='training images')
    ap.add_argument('--findings', type=int, default=10, help='findings (and single-label classes)')
    ap.add_argument('--profile', action='store_true', help='also profile one epoch of each method')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    methods, f = make_dls(args.items, args.findings)
    per_image = np.bincount(f.sum(1))[1:]
    print(f"{args.items} training images; findings per image 1, 2, 3: {per_image.tolist()}; positives per finding "
          f"{f.sum(0).tolist()}")
    bench(methods, args.rounds)
    if args.profile: profile(methods)
