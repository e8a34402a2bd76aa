"""Scale of the partner sampler: time and peak memory to build it and to draw one epoch of indices, for 1e5-1e7 labels.

    python bench/scale.py [--sizes 100000 1000000 10000000] [--classes 10]

The labels are long-tailed (imbalance ratio 100) and given as an array. The dataset is a lazy stand-in that counts
the items read: the labels never come from it. fastai's `TfmdDL.new` reads one item, once, to learn the batch types
(unless the source loader has already run), and the "reads" column shows that count. Peak memory is measured with
tracemalloc (Python and NumPy allocations). Each size runs once, in one process."""
import argparse, time, tracemalloc, warnings
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')
import numpy as np
from fastai.data.load import DataLoader
from fastai.data.core import TfmdDL
from fastai_bmx.sampling import resampled_dl
from fastai_bmx.data import longtail_counts


class Counting:
    "A dataset of `n` dummy items that counts how many are read"
    def __init__(self, n): self.n, self.reads = n, 0
    def __len__(self): return self.n
    def __getitem__(self, i): self.reads += 1; return (0., 0)


def measure(f):
    tracemalloc.start(); tracemalloc.reset_peak()
    t = time.perf_counter(); out = f(); dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
    return out, dt, peak / 2**20


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', type=int, nargs='+', default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument('--classes', type=int, default=10)
    args = ap.parse_args()
    print(f"{'labels':>10} | {'build s':>8} | {'build MiB':>9} | {'draw s':>7} | {'draw MiB':>8} | {'ns/label':>8} | reads | min/max class share")
    for n in args.sizes:
        counts = longtail_counts(n, args.classes, 100.)
        counts = np.maximum(1, np.round(counts * n / counts.sum())).astype(int)
        labels = np.repeat(np.arange(args.classes), counts)[:n]
        labels = np.pad(labels, (0, n - len(labels)))  # rounding may leave a few short: they join class 0
        np.random.default_rng(0).shuffle(labels)
        ds = Counting(len(labels)); dl = TfmdDL(ds, bs=64)
        pdl, t_build, m_build = measure(lambda: resampled_dl(dl, 0., labels))
        idxs, t_draw, m_draw = measure(pdl.get_idxs)
        share = np.bincount(labels[np.asarray(idxs)], minlength=args.classes) / len(idxs)
        print(f"{len(labels):>10,} | {t_build:8.3f} | {m_build:9.1f} | {t_draw:7.3f} | {m_draw:8.1f} | "
              f"{1e9*(t_build+t_draw)/len(labels):8.1f} | {ds.reads:5d} | {share.min():.4f} / {share.max():.4f}", flush=True)
