"""Speed of the paired multi-label bootstrap: macro AP of two runs on the same test images, 1000 resamples.

    python bench/multilabel_bootstrap_speed.py [--images 300] [--findings 45] [--n 1000] [--reps 3]

Long-tailed multi-hot targets (positive rates from 30% down to 0.4%, so the rarest findings have one or two test
positives), two runs' sigmoid scores rounded to 2 decimals (so there are ties). Times
`bootstrap_findings_paired(..., metric='macro_ap', stratify=True)` from arrays to interval (the median of `--reps`
runs; the target is under 2 s), then checks its first resamples against the slow way: the same `draw_resample`
stream, each resample's images scored by scikit-learn (`macro_ap`).
"""
import argparse, time, warnings
warnings.filterwarnings('ignore')
import numpy as np
from fastai_bmx.bootstrap import draw_resample
from fastai_bmx.multilabel_metrics import macro_ap
from fastai_bmx.multilabel_bootstrap import bootstrap_findings_paired, rarest_finding_strata

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('--images', type=int, default=300)
ap.add_argument('--findings', type=int, default=45)
ap.add_argument('--n', type=int, default=1000)
ap.add_argument('--reps', type=int, default=3)
args = ap.parse_args()

g = np.random.default_rng(0)
t = (g.random((args.images, args.findings)) < np.geomspace(.3, .004, args.findings)).astype(int)
pa = np.round(1 / (1 + np.exp(-(g.normal(size=t.shape) + 1.5 * t - 2))), 2)
pb = np.round(np.clip(pa + g.normal(0, .05, pa.shape), 0, 1), 2)

times = []
for _ in range(args.reps):
    t0 = time.perf_counter()
    d = bootstrap_findings_paired(pa, pb, t, 'macro_ap', n=args.n, seed=0)
    times.append(time.perf_counter() - t0)

k = 20  # the slow way, on the first k resamples: their mean must be the fast path's on the same k
r, strata = np.random.default_rng(0), rarest_finding_strata(t)
slow = [macro_ap(pa[i], t[i]).value - macro_ap(pb[i], t[i]).value
        for i in (draw_resample(r, len(t), strata) for _ in range(k))]
fast = bootstrap_findings_paired(pa, pb, t, 'macro_ap', n=k, seed=0)
np.testing.assert_allclose(fast.mean, np.mean(slow), atol=1e-12)

print(f"paired bootstrap of macro AP: {args.images} images x {args.findings} findings "
      f"({d.n_scored} with a test positive), {args.n} resamples, median of {args.reps}")
print(f"  {np.median(times):.3f} s (runs: {', '.join(f'{s:.3f}' for s in times)}); "
      f"difference {d.point:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]")
print(f"  mean of the first {k} resamples: the slow way's (scikit-learn on each resample's images) to 1e-12")
