"""Runs per hour in mixed precision against fp32, on the same model and data, and the test metrics of both.

    python bench/precision.py [--data retinamnist.npz] [--seeds 0 1 2] [--epochs 10] [--arch resnet18] [--precision bf16]
                              [--threads N] [--out bench/out/precision]

One process trains `bmx-compare`'s run (`train_eval`, instance sampling, ResNet-18 at the file's 28 px, bs 64) once per
seed in fp32 and once in `--precision` (bf16 with channels-last on a CPU, fp16 or bf16 on CUDA), alternating which goes
first from seed to seed, so that drifts of a shared machine hit both. It prints the training time of every run, the
ratio of runs per hour, and the test metrics with the paired difference (mixed − fp32) and its 95% interval
(`fastai_bmx.app.decide.paired`), then saves `precision.csv` and `precision.png` (runs per hour, and the main metric per seed).
"""
import argparse, json, os, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore')
import numpy as np, pandas as pd, torch
from fastai.torch_core import set_seed
from fastai_bmx.app.plan.sources import load_source
from fastai_bmx.app.run.training import train_eval
from fastai_bmx.app.decide.paired import paired_differences, paired_interval, verdict
from fastai_bmx.medmnist import bmx_data

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('--data', default='retinamnist.npz', help="a MedMNIST .npz: a path, or a name under $BMX_DATA / shared/data")
ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
ap.add_argument('--epochs', type=int, default=10)
ap.add_argument('--arch', default='resnet18')
ap.add_argument('--precision', default='bf16', choices=['bf16', 'fp16'])
ap.add_argument('--threads', type=int, default=None)
ap.add_argument('--out', default='bench/out/precision')
args = ap.parse_args()
if args.threads: torch.set_num_threads(args.threads)
data = args.data if Path(args.data).exists() else str(bmx_data()/args.data)
out = Path(args.out); out.mkdir(parents=True, exist_ok=True)

rows, preds = [], {}
for i, seed in enumerate(args.seeds):
    for prec in (['fp32', args.precision] if i % 2 == 0 else [args.precision, 'fp32']):
        set_seed(seed, reproducible=True)
        dls, rec = load_source(data, bs=64, seed=seed)
        row, p = train_eval(dls, rec, 'instance', arch=args.arch, epochs=args.epochs, path=out, fname=f'{prec}_{seed}',
                            show_bar=False, precision=prec)
        rows.append(dict(seed=seed, precision=prec, train_s=row['train_s'], **{k: row[k] for k in ('quadratic_kappa', 'mcc', 'balanced_accuracy')}))
        preds[(prec, seed)] = (p['probs'].numpy(), p['targs'].numpy())
        print(f"seed {seed} {prec}: {row['train_s']:.1f} s, kappa {row['quadratic_kappa']:.4f}, mcc {row['mcc']:.4f}", flush=True)

df = pd.DataFrame(rows)
df.to_csv(out/'precision.csv', index=False)
t = df.groupby('precision').train_s.median()
device = torch.cuda.get_device_name() if torch.cuda.is_available() else f'CPU, {torch.get_num_threads()} threads'
print(f"\n{device}; {Path(data).name}, {args.arch}, {args.epochs} epochs, bs 64")
print(f"median training time: fp32 {t['fp32']:.1f} s, {args.precision} {t[args.precision]:.1f} s -> "
      f"{3600/t['fp32']:.0f} vs {3600/t[args.precision]:.0f} runs per hour, {t['fp32']/t[args.precision]:.2f}x")
targs = preds[('fp32', args.seeds[0])][1]
summary = {}
for metric in ('quadratic_kappa', 'mcc', 'balanced_accuracy'):
    ci = paired_interval(*paired_differences([preds[(args.precision, s)][0] for s in args.seeds], [preds[('fp32', s)][0] for s in args.seeds], targs, metric))
    g = df.groupby('precision')[metric]
    summary[metric] = dict(fp32=f"{100*g.mean()['fp32']:.2f} ± {100*g.std()['fp32']:.2f}", mixed=f"{100*g.mean()[args.precision]:.2f} ± {100*g.std()[args.precision]:.2f}",
                           diff=f"{100*ci['diff']:+.2f} [{100*ci['lo']:+.2f}, {100*ci['hi']:+.2f}]", verdict=verdict(ci['lo'], ci['hi'], len(args.seeds)))
print(pd.DataFrame(summary).T.to_string())
(out/'summary.json').write_text(json.dumps(dict(device=device, speedup=float(t['fp32']/t[args.precision]), runs_per_hour={k: 3600/v for k, v in t.items()}, metrics=summary), indent=1))

from matplotlib.figure import Figure
fig = Figure(figsize=(8, 3.2), layout='constrained')
a, b = fig.subplots(1, 2, width_ratios=[2, 3])
a.bar(['fp32', args.precision], [3600/t['fp32'], 3600/t[args.precision]], color=['tab:gray', 'tab:blue'])
a.set_ylabel('runs per hour'); a.set_title(f'{device}', fontsize=9)
for prec, c in (('fp32', 'tab:gray'), (args.precision, 'tab:blue')):
    d = df[df.precision == prec]
    b.plot(d.seed, 100*d.quadratic_kappa, 'o-', color=c, label=prec)
b.set_xticks(args.seeds); b.set_xlabel('seed'); b.set_ylabel('test quadratic kappa (%)'); b.legend(fontsize=8)
b.set_title(f'{Path(data).name}, {args.arch}, {args.epochs} epochs', fontsize=9)
fig.savefig(out/'precision.png', dpi=110)
print(f"wrote {out/'precision.csv'}, summary.json and precision.png")
