"""Speed of `bmx-report` on a recorded comparison, and of the paired bootstrap where a model predicts one class.

    python bench/report_speed.py [--folder nbs/results/pretrained/ham10000_128] [--reps 3] [--n 1000]

1. `bmx-report` on a copy of the folder (it rewrites results.md and the plots), as a whole process, start-up
   included, `--reps` times; each results.md must be the folder's own, byte for byte.
2. `paired_differences` on the folder's test targets with a run that predicts one class (MCC's denominator is 0 in
   every resample), against the old fallback: the metric called once per degenerate resample. Both must agree.
3. `bootstrap_metrics` with this package's metrics on that run: the closed form against one call per resample.
"""
import argparse, shutil, subprocess, sys, tempfile, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore')
import numpy as np
from fastai_bmx.app.decide import paired
from fastai_bmx.app.decide.paired import paired_differences
from fastai_bmx.app.run.store import RunFolder
from fastai_bmx.bootstrap import bootstrap_metrics
from fastai_bmx.metrics import PAPER_METRICS

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('--folder', default='nbs/results/pretrained/ham10000_128')
ap.add_argument('--reps', type=int, default=3)
ap.add_argument('--n', type=int, default=1000)
args = ap.parse_args()
src = Path(args.folder)

# 1. bmx-report, whole process
report = shutil.which('bmx-report') or sys.exit('bmx-report is not installed: pip install -e .')
with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp)/src.name
    shutil.copytree(src, out)
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        subprocess.run([report, str(out)], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
        same = (out/'results.md').read_bytes() == (src/'results.md').read_bytes()
        assert same, "results.md differs from the folder's"
took = ', '.join(f'{t:.2f}' for t in times)
print(f"bmx-report {src}: {took} s (median {np.median(times):.2f} s); results.md identical")

# 2. paired bootstrap with a run that predicts one class
folder = RunFolder(src)
res = folder.results()
_, t = folder.preds(res.run.iloc[0])
runs = [folder.preds(r)[0].argmax(1) for r in res.run.iloc[:3]]
flat = [np.full(len(t), np.bincount(t).argmax())] * len(runs)  # the majority class, always
funcs = {m.name: m.func for m in PAPER_METRICS}

def old_values(q, idx, metric):
    "The old path for a run whose every resample is degenerate: the metric once per resample"
    return np.array([funcs[metric](q[i], t[i]) for i in idx])

for metric in ('mcc', 'balanced_accuracy'):
    paired._VALUES.clear(); paired._RESAMPLES.clear()  # no help from earlier calls
    t0 = time.perf_counter()
    d, boot = paired_differences(flat, runs, t, metric, n=args.n)
    new = time.perf_counter() - t0
    idx = paired._resamples(t, args.n, 0)
    t0 = time.perf_counter()
    want = old_values(flat[0], idx, metric)  # the one-class run's values, once: the old path did it for each seed
    old = (time.perf_counter() - t0) * len(flat)
    real = [paired._run_values(t, q, idx, max(t.max(), q.max()) + 1)[metric] for q in runs]
    got = np.r_[d[None], boot] + np.stack(real, 1)
    np.testing.assert_allclose(got, np.repeat(want[:, None], len(flat), 1), rtol=0, atol=1e-12)
    print(f"paired_differences, {metric}, {len(flat)} seeds of a one-class run against {len(runs)} real ones, "
          f"n={args.n}: {new:.3f} s; the old per-resample fallback {old:.2f} s ({old/new:.0f}x); the same values")

# 3. bootstrap_metrics on the one-class run
own = {m.name: m.func for m in PAPER_METRICS if m.name != 'kendall_tau'}
generic = {k: (lambda f: lambda p, y: f(p, y))(f) for k, f in own.items()}  # behind lambdas: one call per resample
tm = {}
for name, metrics in (('closed form', own), ('per resample', generic)):
    t0 = time.perf_counter()
    df = bootstrap_metrics(flat[0], t, metrics, n=args.n)
    tm[name] = time.perf_counter() - t0
    if name == 'closed form': ref = df.values
np.testing.assert_allclose(df.values, ref, rtol=0, atol=1e-12)
print(f"bootstrap_metrics, {len(own)} metrics of the one-class run, n={args.n}: closed form {tm['closed form']:.3f} s, "
      f"one call per resample {tm['per resample']:.2f} s ({tm['per resample']/tm['closed form']:.0f}x); "
      "the same values")
