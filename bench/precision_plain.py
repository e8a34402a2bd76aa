"""The same phases as `precision_phases.py` in a plain PyTorch loop: forward, backward and Adam step, fp32 against bf16.

    python bench/precision_plain.py [--rounds 3] [--steps 20] [--threads N]

ResNet-18 (timm, 5 classes) on one random batch of 64 images at 28 px; per round, fp32, bf16 autocast, and bf16 with
channels-last, each building a fresh model and timing `--steps` steps after 3 of warm-up. Prints the median ms per step
of each phase.
"""
import argparse, statistics, time, warnings
warnings.filterwarnings('ignore')
import torch, torch.nn.functional as F
from fastai.vision.learner import create_timm_model

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('--rounds', type=int, default=3)
ap.add_argument('--steps', type=int, default=20)
ap.add_argument('--threads', type=int, default=None)
args = ap.parse_args()
if args.threads: torch.set_num_threads(args.threads)

def time_steps(bf16:bool, channels_last:bool) -> dict:
    "Mean ms per step of forward, backward and optimiser step"
    torch.manual_seed(0)
    model = create_timm_model('resnet18', 5, pretrained=False)[0]
    if channels_last: model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters())
    xb, yb = torch.randn(64, 3, 28, 28), torch.randint(0, 5, (64,))
    t = dict(forward=0., backward=0., step=0.)
    for i in range(args.steps + 3):
        t0 = time.perf_counter()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16): loss = F.cross_entropy(model(xb).float(), yb)
        t1 = time.perf_counter(); loss.backward()
        t2 = time.perf_counter(); opt.step(); opt.zero_grad()
        t3 = time.perf_counter()
        if i >= 3: t['forward'] += t1 - t0; t['backward'] += t2 - t1; t['step'] += t3 - t2
    return {k: 1000*v/args.steps for k, v in t.items()}

cases = {'fp32': (False, False), 'bf16': (True, False), 'bf16 + channels-last': (True, True)}
runs = {name: [] for name in cases}
for r in range(args.rounds):
    for name, case in cases.items(): runs[name].append(time_steps(*case))
print(f"resnet18, bs 64, 28 px, {torch.get_num_threads()} threads; median ms per step over {args.rounds} alternating rounds")
for name, rs in runs.items():
    med = {p: statistics.median(r[p] for r in rs) for p in rs[0]}
    print(f"{name:22s}" + '  '.join(f"{p} {v:6.1f}" for p, v in med.items()) + f"  total {sum(med.values()):6.1f}")
