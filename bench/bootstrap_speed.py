"""Speed of `bootstrap_metrics`: the vectorised confusion-matrix path against calling each metric once per resample.

    python bench/bootstrap_speed.py [--items 2000] [--n 1000] [--reps 3]

Both paths run in one process, alternating, on the same predictions (5 classes, 4 metrics): scikit-learn's metrics
(vectorised), the same behind plain callables (one call per resample), and this package's own metric functions
(`fastai_bmx.metrics`, which take the vectorised path too). The script prints each time and the ratios, and checks
that all paths give the same means.
"""
import argparse, time, warnings
from functools import partial
warnings.filterwarnings('ignore')
import numpy as np
import sklearn.metrics as skm
from fastai_bmx.evaluation import bootstrap_metrics
from fastai_bmx import metrics as bm

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('--items', type=int, default=2000)
ap.add_argument('--n', type=int, default=1000)
ap.add_argument('--reps', type=int, default=3)
args = ap.parse_args()

rng = np.random.default_rng(0)
t = rng.choice(5, args.items, p=[.5, .2, .15, .1, .05])
pred = np.where(rng.random(args.items) < .7, t, rng.integers(0, 5, args.items))
sk = {'quadratic_kappa': partial(skm.cohen_kappa_score, weights='quadratic'), 'mcc': skm.matthews_corrcoef,
      'balanced_accuracy': skm.balanced_accuracy_score, 'macro_f1': partial(skm.f1_score, average='macro')}
# the same metrics hidden behind plain callables, which bootstrap_metrics must call once per resample
generic = {k: (lambda p, t, f=f: f(t, p)) for k, f in sk.items()}

own = {k: getattr(bm, k) for k in sk}
times = {'vectorised': [], 'per resample': [], 'fastai_bmx': []}
for _ in range(args.reps):
    for name, metrics in (('vectorised', sk), ('per resample', generic), ('fastai_bmx', own)):
        t0 = time.perf_counter()
        df = bootstrap_metrics(pred, t, metrics, n=args.n, seed=0)
        times[name].append(time.perf_counter() - t0)
        means = df['mean'].values
        if name == 'vectorised': ref = means
        else: np.testing.assert_allclose(means, ref, atol=1e-12)

med = {k: float(np.median(v)) for k, v in times.items()}
print(f"bootstrap n={args.n}, {args.items} items, 5 classes, 4 metrics, median of {args.reps} alternating runs")
for k, v in med.items(): print(f"  {k:13s} {v:7.3f} s")
print(f"  ratio per-resample / vectorised: {med['per resample']/med['vectorised']:.0f}x, "
      f"per-resample / fastai_bmx metrics: {med['per resample']/med['fastai_bmx']:.0f}x (same means to 1e-12)")
