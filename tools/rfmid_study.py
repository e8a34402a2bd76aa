"""RFMiD findings study: the multi-label library parts (class-aware partner, losses) compared on real fundus images

Trains EfficientNet-Lite0 from the offline ImageNet weights on `rfmid_64/labels.csv` (the official splits), one run per
method and seed, picks each run's best epoch on validation macro mAP, and records the flip-TTA test and validation
probabilities. Resumes: a (method, seed) already in `runs.csv` is skipped. `bmx-compare` doesn't read multi-label data
yet; until it does, this is how the RFMiD table of the Results page is made.

    python tools/rfmid_study.py --data ../shared/data/rfmid_64 --out nbs/results/multilabel/rfmid_64_study
"""
from __future__ import annotations
import argparse, json, os, time, warnings
from pathlib import Path
import numpy as np, pandas as pd, torch

METHODS = {  # name: (partner α or None, sampler q or None, loss)
    'instance': (None, None, 'bce'), 'class-aware': (None, 0., 'bce'), 'sqrt': (None, .5, 'bce'),
    'bmx0.1': (.1, None, 'bce'), 'bmx0.2': (.2, None, 'bce'), 'bmx0.3': (.3, None, 'bce'),
    'asl': (None, None, 'asl'), 'bmx0.2+asl': (.2, None, 'asl'),
}

def read_labels(data:Path) -> tuple[pd.DataFrame, list, list]:
    "The label table, the findings training sees (the vocabulary), and the findings left out (never in training)"
    df = pd.read_csv(data/'labels.csv', keep_default_na=False)
    sets = df['labels'].str.split('|').map(lambda o: [s for s in o if s])
    seen = sorted({f for o, s in zip(sets, df['split']) if s == 'train' for f in o})
    unseen = sorted({f for o in sets for f in o} - set(seen))
    return df.assign(findings=sets.map(lambda o: [f for f in o if f in seen])), seen, unseen

def make_dls(df:pd.DataFrame, data:Path, vocab:list, seed:int, bs:int=32):
    "Train/valid loaders from the official splits (random flips), and the labelled test loader"
    from fastai.vision.all import (DataBlock, ImageBlock, MultiCategoryBlock, ColReader, ColSplitter, Flip, Dihedral,
                                   set_seed)
    dev = df[df['split'] != 'test'].assign(is_valid=lambda d: d['split'] == 'valid')
    block = DataBlock((ImageBlock, MultiCategoryBlock(vocab=vocab)), get_x=ColReader('fname', pref=f'{data}/'),
                      get_y=ColReader('findings'), splitter=ColSplitter('is_valid'), batch_tfms=Dihedral())
    set_seed(seed)
    dls = block.dataloaders(dev, bs=bs, num_workers=0, device='cpu')
    return dls, dls.test_dl(df[df['split'] == 'test'], with_labels=True)

def make_learn(dls, method:str):
    "The run's learner: EfficientNet-Lite0 from the offline ImageNet weights, the method's partner, sampler and loss"
    from fastai.losses import BCEWithLogitsLossFlat
    from fastai_bmx.all import pretrained_learner, BalancedMixUp, AsymmetricLoss, MacroAP
    alpha, q, loss = METHODS[method]
    if q is not None: dls = dls.resampled(q)
    cbs = [BalancedMixUp(alpha)] if alpha is not None else []
    loss_func = AsymmetricLoss() if loss == 'asl' else BCEWithLogitsLossFlat()
    return pretrained_learner(dls, 'efficientnet_lite0', loss_func=loss_func, metrics=[MacroAP()], cbs=cbs)

def run(df, data, vocab, method:str, seed:int, epochs:int, lr:float, out:Path) -> dict:
    "Train one run, keep its best epoch on validation macro mAP, record test and validation probabilities"
    from fastai_bmx.all import fine_tune_stages, SaveBestOfStages, flip_tta, tune_thresholds, group_scores
    from fastai_bmx.multilabel_metrics import macro_ap, micro_ap, macro_auroc, macro_f1_at
    dls, test_dl = make_dls(df, data, vocab, seed)
    counts = np.array([sum(f in o for o in df.loc[df['split'] == 'train', 'findings']) for f in vocab])
    learn = make_learn(dls, method)
    learn.path = out; learn.model_dir = 'models'
    save = SaveBestOfStages(monitor='macro_ap', comp=np.greater, fname=f'{method}_s{seed}', with_opt=False)
    t0 = time.time()
    with learn.no_bar(), learn.no_logging():
        vals = fine_tune_stages(learn, epochs, lr, 1, cbs=save)
    train_s = time.time() - t0
    with learn.no_bar():
        probs, targs = flip_tta(learn, dl=test_dl, flips='hv')
        vprobs, vtargs = flip_tta(learn, dl=dls.valid.new(shuffle=False, drop_last=False), flips='hv')
    (out/'models'/f'{method}_s{seed}.pth').unlink(missing_ok=True)
    (out/'preds').mkdir(exist_ok=True)
    np.savez_compressed(out/'preds'/f'{method}_s{seed}.npz', probs=probs.numpy(), targs=targs.numpy().astype(np.uint8),
                        valid_probs=vprobs.numpy(), valid_targs=vtargs.numpy().astype(np.uint8))
    thresholds = tune_thresholds(vprobs.numpy(), vtargs.numpy())
    groups = group_scores(probs.numpy(), targs.numpy(), counts, thresholds)
    m = macro_ap(probs.numpy(), targs.numpy())
    return dict(method=method, seed=seed, best_epoch=int(vals['macro_ap'].values.argmax()) + 1,
                valid_macro_ap=float(vals['macro_ap'].max()), macro_ap=m.value, n_scored=m.n_scored,
                micro_ap=micro_ap(probs.numpy(), targs.numpy()),
                macro_auroc=macro_auroc(probs.numpy(), targs.numpy()).value,
                macro_f1=macro_f1_at(probs.numpy(), targs.numpy(), thresholds).value,
                **{f'{g}_ap': groups.loc[g, 'macro_ap'] for g in ('head', 'medium', 'tail')},
                train_s=round(train_s, 1))

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', type=Path, required=True, help='the rfmid_64 folder')
    p.add_argument('--out', type=Path, required=True, help='the study folder: runs.csv and preds/')
    p.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--epochs', type=int, default=15)
    p.add_argument('--lr', type=float, default=1e-2)
    a = p.parse_args()
    warnings.filterwarnings('ignore')
    df, vocab, unseen = read_labels(a.data)
    a.out.mkdir(parents=True, exist_ok=True)
    settings = dict(arch='efficientnet_lite0', weights='ImageNet (offline)', size=64, bs=32, epochs=a.epochs,
                    freeze_epochs=1, lr=a.lr, monitor='valid macro_ap', tta='flips h, v, hv', findings=vocab,
                    left_out=unseen, threads=torch.get_num_threads())
    (a.out/'settings.json').write_text(json.dumps(settings, indent=1) + '\n')
    runs = a.out/'runs.csv'
    done = pd.read_csv(runs) if runs.exists() else pd.DataFrame(columns=['method', 'seed'])
    for seed in a.seeds:
        for method in a.methods:
            if ((done['method'] == method) & (done['seed'] == seed)).any(): continue
            row = run(df, a.data, vocab, method, seed, a.epochs, a.lr, a.out)
            done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
            done.to_csv(runs.with_suffix('.tmp'), index=False); os.replace(runs.with_suffix('.tmp'), runs)
            print(json.dumps(row), flush=True)

if __name__ == '__main__': main()
