"""Quick start: Balanced-MixUp on a long-tailed image set that ships with scikit-learn (no files, no network).

    python examples/quickstart.py [--epochs 10] [--alpha 0.2]

Trains a ResNet-18 from scratch with and without `BalancedMixUp`, then prints test metrics with
stratified-bootstrap mean ± std and the recall of every class.
"""
import argparse, time, warnings
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')  # raised inside torch on import
import torch
from fastai.vision.all import vision_learner, set_seed
from fastai_bmx.all import *


def run(cbs, epochs, seed=0):
    set_seed(seed, reproducible=True)
    dls = digits_dls(bs=32, seed=seed)  # 10 digits, imbalance ratio 10: 104 training images of '0', 11 of '9'
    learn = vision_learner(dls, 'resnet18', pretrained=False, metrics=[MCC(), BalancedAccuracy(), MacroF1()], cbs=cbs)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, 2e-3)
    with learn.no_bar(): probs, targs = learn.get_preds(dl=dls.test)  # no flip TTA: digits aren't mirror-symmetric
    return dls, probs, targs

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--epochs', type=int, default=10)
    ap.add_argument('--alpha', type=float, default=0.2)
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    metrics = dict(mcc=mcc, balanced_accuracy=balanced_accuracy, macro_f1=macro_f1)
    for name, cbs in (('instance sampling', []), (f'Balanced-MixUp α={args.alpha}', [BalancedMixUp(args.alpha)])):
        t0 = time.time()
        dls, probs, targs = run(cbs, args.epochs)
        print(f'\n== {name} ({time.time()-t0:.0f} s) — test set, stratified bootstrap n=1000')
        print(fmt_mean_std(bootstrap_metrics(probs, targs, metrics)).to_string())
        print('recall per class:', per_class_report(probs, targs, vocab=dls.vocab)['recall'].round(2).to_dict())
