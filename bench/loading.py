"""What a pretrained run costs on a CPU: channels-last memory, images decoded once, and loader workers against threads.

    python bench/loading.py [--data ham10000_224/labels.csv] [--size 64] [--batches 20] [--rounds 3] [--part all]
                            [--out nbs/results/loading]

Three parts, each in alternating rounds (every setting once per round, the order turned round from one round to the
next), so that the drifts of a shared machine hit every setting alike. Each figure is the median over the rounds.

- `channels`: one training step of 64 images (forward, backward, Adam), NCHW against channels-last memory, for
  EfficientNet-Lite0 at 64 and 128 px and the ResNets of the 28-px tables.
- `loading`: `--batches` training batches of `bmx-compare`'s fine-tuning, every layer training (EfficientNet-Lite0, bs 64, its batch
  augmentations and, from memory, the same loaders `memory_dls` builds) on a CSV of image files, read from the files
  as fastai does (`ImageDataLoaders`, its default of one worker process per core) and decoded once into memory (with 2
  torch threads, and with 1: two processes of 1 thread each is how `bmx-compare` shares the 2 cores).
- `workers`: the file source again, with 0, 1 or 2 loader worker processes and 1 or 2 torch threads.

It writes `loading.md` (the tables) and `loading.csv` (every timing) to `--out`.
"""
import argparse, os, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore')
import numpy as np, pandas as pd, torch
from fastai.vision.learner import create_timm_model
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.progress import *  # no_bar
from fastai.callback.schedule import *  # fit_one_cycle
from fastai.torch_core import set_seed
from fastai_bmx.medmnist import bmx_data
from fastai_bmx.files import csv_dls
from fastai_bmx.weights import find_weights, pretrained_learner

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('--data', default='ham10000_224/labels.csv', help="a CSV of image files: a path, or a name under $BMX_DATA / shared/data")
ap.add_argument('--size', type=int, default=64)
ap.add_argument('--batches', type=int, default=20)
ap.add_argument('--rounds', type=int, default=3)
ap.add_argument('--part', default='all', choices=['all', 'channels', 'loading', 'workers'])
ap.add_argument('--out', default='nbs/results/loading')
args = ap.parse_args()
data = args.data if Path(args.data).exists() else str(bmx_data()/args.data)
out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
rows = []


def alternate(settings:dict, run, rounds:int):
    "Run every setting once per round, reversing the order each round; return {name: [seconds per round]}"
    times = {k: [] for k in settings}
    for r in range(rounds):
        for k in (list(settings) if r % 2 == 0 else list(settings)[::-1]):
            times[k].append(run(**settings[k]))
            print(f"  round {r}: {k}: {times[k][-1]:.3f} s", flush=True)
    return times


def step_time(arch:str, size:int, channels_last:bool, steps:int=6) -> float:
    "Median seconds of one training step of 64 images, after two warm-up steps"
    torch.set_num_threads(2)
    model = create_timm_model(arch, 7, pretrained=False)[0].train()
    if channels_last: model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.randn(64, 3, size, size), torch.randint(0, 7, (64,))
    ts = []
    for _ in range(steps + 2):
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts[2:]))


class StopAfter(Callback):
    "Time `n` training batches, loading included, after a warm-up batch; then stop the fit"
    order = 99
    def __init__(self, n:int): self.n, self.times = n, []
    def after_batch(self):
        if not self.training: return
        if self.iter == 0: self.t0 = time.perf_counter()
        if self.iter == self.n: self.times.append((time.perf_counter() - self.t0) / self.n); raise CancelFitException()


def batches_time(in_memory:bool, workers:int|None=None, threads:int=2) -> float:
    "Seconds per training batch of fine-tuning every layer (the second stage, most of a run), loading included"
    torch.set_num_threads(threads)
    set_seed(0)
    kw = {} if workers is None else dict(num_workers=workers)
    dls = csv_dls(data, bs=64, size=args.size, seed=0, in_memory=in_memory, **kw)
    learn = pretrained_learner(dls, 'efficientnet_lite0', weights=W, cbs=[ChannelsLast()])
    stop = StopAfter(args.batches)
    learn.unfreeze()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 2e-3, cbs=stop)
    return stop.times[0]


def table(times:dict, part:str, base:str) -> str:
    med = {k: float(np.median(v)) for k, v in times.items()}
    for k, v in times.items(): rows.extend(dict(part=part, setting=k, round=i, seconds=s) for i, s in enumerate(v))
    lines = ['| setting | median s | min–max s | speed-up vs ' + base + ' |', '|---|---|---|---|']
    lines += [f"| {k} | {med[k]:.3f} | {min(v):.3f}–{max(v):.3f} | {med[base]/med[k]:.2f}× |" for k, v in times.items()]
    return '\n'.join(lines)


W = find_weights('efficientnet_lite0')
md = [f"# What a pretrained run costs here", '',
      f"`python bench/loading.py --part {args.part} --size {args.size} --batches {args.batches} --rounds {args.rounds}`; "
      f"{os.cpu_count()} CPU cores; {args.rounds} alternating rounds, medians.", '']
if args.part in ('all', 'channels'):
    for arch, size in (('efficientnet_lite0', 64), ('efficientnet_lite0', 128), ('resnet18', 28), ('resnet10t', 28)):
        print(f"channels: {arch} at {size} px", flush=True)
        t = alternate({f'{arch} {size} px NCHW': dict(arch=arch, size=size, channels_last=False),
                       f'{arch} {size} px channels-last': dict(arch=arch, size=size, channels_last=True)}, step_time, args.rounds)
        md += [f"## One training step of 64 images: {arch} at {size} px, 2 threads", '', table(t, 'channels', f'{arch} {size} px NCHW'), '']
if args.part in ('all', 'loading'):
    print('loading', flush=True)
    t = alternate({'files, fastai default workers': dict(in_memory=False), 'decoded once, in memory': dict(in_memory=True),
                   'decoded once, in memory, 1 thread': dict(in_memory=True, threads=1)}, batches_time, args.rounds)
    md += [f"## A training batch of fine-tuning EfficientNet-Lite0 at {args.size} px, loading included (2 threads, channels-last)", '',
           f"{Path(data).name}; seconds per batch of 64, every layer training, over {args.batches} batches after a warm-up one.", '',
           table(t, 'loading', 'files, fastai default workers'), '']
if args.part in ('all', 'workers'):
    print('workers', flush=True)
    t = alternate({f'files, {w} workers, {th} threads': dict(in_memory=False, workers=w, threads=th) for w in (0, 1, 2) for th in (1, 2)},
                  batches_time, args.rounds)
    md += [f"## Loader workers against torch threads, files read every epoch ({args.size} px)", '',
           table(t, 'workers', 'files, 2 workers, 2 threads'), '']
(out/'loading.md').write_text('\n'.join(md))
pd.DataFrame(rows).to_csv(out/'loading.csv', index=False)
print('\n'.join(md))
