"Public functions check their arguments when called: one table of (callable, bad arguments, expected error), and valid ones still work"
import math
import numpy as np, pytest, torch
from torch import nn
import fastcore.test as fct
from fastai.data.core import TfmdDL, DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import params
from fastai.callback.progress import *  # Learner.no_bar
from fastai_bmx.mixup import check_alpha, bmx_class_mass, BalancedMixUp, BalancedCutMix, box_mask
from fastai_bmx.sampling import check_labels, check_q, check_counts, class_probs, sampling_probs, ResampledDL, resampled_dl
from fastai_bmx.losses import (WeightedFocalLoss, WeightedFocalLossFlat, check_beta, class_counts, cb_weights, ClassBalancedLoss,
                               DeferredReweight)
from fastai_bmx.adjust import check_tau, log_prior, LogitAdjustedCE, LogitAdjustedLoss, posthoc_adjust, tune_tau
from fastai_bmx.app.decide.paired import paired_differences, paired_interval
from fastai_bmx.retrain import retrain_classifier
from fastai_bmx.metrics import balanced_accuracy

NAN = float('nan')
Y = torch.tensor([0] * 12 + [1] * 6 + [2] * 2)
DS = torch.utils.data.TensorDataset(torch.randn(20, 4), Y)
PROBS, TARGS = np.full((30, 3), 1 / 3), np.arange(30) % 3
PREDS = [np.random.default_rng(s).integers(0, 3, 30) for s in range(2)]  # two seeds' class indices
BOOT = np.zeros((5, 2))


def acc(p, t):
    "A metric of one's own, which checks nothing: accuracy of the argmax"
    return float((np.asarray(p).argmax(1) == np.asarray(t)).mean())


def toy_dls(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([int(i % 6 == 0) + int(i % 12 == 0) for i in range(n)])
    x = torch.randn(n, 3, 8, 8, generator=g) + y[:, None, None, None].float()
    return DataLoaders.from_dsets(list(zip(x, y)), list(zip(x[:20], y[:20])), bs=10, device='cpu'), y


def crt_learner(tmp='/tmp'):
    "A body + head learner, split in two parameter groups as `vision_learner` splits"
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    head = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3))
    return Learner(toy_dls()[0], nn.Sequential(body, head), loss_func=CrossEntropyLossFlat(),
                   splitter=lambda m: [params(m[0]), params(m[1])], path=tmp)


def crt(**kw): return retrain_classifier(crt_learner(), **kw)

def crt_one_group(**kw):
    ds = [(torch.randn(4), torch.tensor(i % 2)) for i in range(20)]
    return retrain_classifier(Learner(DataLoaders.from_dsets(ds, ds, bs=4), nn.Linear(4, 2), loss_func=CrossEntropyLossFlat()), **kw)

def fit_drw(**kw):
    "Fit a 3-class model for two epochs with `DeferredReweight(**kw)`"
    ds = list(zip(torch.randn(20, 4), Y))
    learn = Learner(DataLoaders.from_dsets(ds, ds, bs=4, device='cpu'), nn.Linear(4, 3), loss_func=CrossEntropyLossFlat(),
                    cbs=DeferredReweight(**kw))
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-3)

def resampled_dls(**kw): return DataLoaders(TfmdDL(DS, bs=4), TfmdDL(DS, bs=4)).resampled(**kw)
def resampled_dl_(**kw): return resampled_dl(TfmdDL(DS, bs=4), **kw)
def resampled_DL(**kw): return ResampledDL(DS, bs=4, shuffle=True, **kw)
def cb_from_dl(**kw): return ClassBalancedLoss.from_dl([0, 1, 1], **kw)


Q_MSG, COUNTS_NEG = r"q=.* is not a number in \[0, 1\]", r"counts must be finite and ≥ 0 \(they can't be negative\)"
COUNTS_1D, TAU = r"counts must hold one count per class.*1-D array", r"must be a number >= 0 \(0: no adjustment"
ALPHA, BETA = r"must be a finite number > 0: λ ~ Beta", r"is not a number in \[0, 1\)\. The effective number"
GAMMA, REDUCTION = r"is not a finite number >= 0\. gamma=0 is plain", r"reduction='avg' is not one of 'mean', 'sum', 'none'"
PAIR_LEN = r"has \d+ predictions for \d+ targets: every run must predict the test items of targs"
BOOT_SHAPE, N_CLASSES = r"boot must hold the differences on n >= 2 resamples .* shape \(n, 2\)", r"n_classes=.* must be a whole number ≥ 1"
WGTS_SHAPE = r"wgts must hold one sampling weight per item of the dataset, 20 in a 1-D array"

# (id, callable, bad keyword arguments, error type, regex of its message)
CASES = [
    # --- mixup.py
    ('check_alpha nan', check_alpha, dict(alpha=NAN), ValueError, 'alpha=nan ' + ALPHA),
    ('check_alpha str', check_alpha, dict(alpha='0.2'), ValueError, "alpha='0.2' " + ALPHA),
    ('BalancedMixUp alpha 0', BalancedMixUp, dict(alpha=0), ValueError, 'alpha=0 ' + ALPHA),
    ('BalancedMixUp alpha bool', BalancedMixUp, dict(alpha=True), ValueError, 'alpha=True ' + ALPHA),
    ('BalancedMixUp per_sample str', BalancedMixUp, dict(per_sample='yes'), TypeError, r"per_sample='yes' must be True or False"),
    ('BalancedMixUp per_sample int', BalancedMixUp, dict(per_sample=1), TypeError, r"per_sample=1 must be True or False"),
    ('BalancedMixUp q 2', BalancedMixUp, dict(q=2), ValueError, Q_MSG),
    ('BalancedMixUp q nan', BalancedMixUp, dict(q=NAN), ValueError, Q_MSG),
    ('BalancedMixUp stop 2', BalancedMixUp, dict(stop=2), ValueError, r"stop=2 must be a fraction of training in \[0, 1\], or None"),
    ('BalancedMixUp labels 3-D', BalancedMixUp, dict(labels=np.zeros((3, 3, 2), dtype=int)), ValueError,
     r"labels must hold one class index per item, but have shape \(3, 3, 2\)"),
    ('BalancedMixUp findings soft', BalancedMixUp, dict(labels=[[0, 0.5], [1, 0]]), ValueError,
     r"labels must be 0/1 \(multi-hot\), but hold 0.5: continuous \(regression\) or soft targets"),
    ('BalancedMixUp labels float', BalancedMixUp, dict(labels=[0.5, 1.5]), TypeError, r"labels are floats .*regression targets"),
    ('BalancedMixUp labels negative', BalancedMixUp, dict(labels=[0, -1]), ValueError, r"labels contain the negative class index -1"),
    ('BalancedCutMix per_sample str', BalancedCutMix, dict(per_sample='no'), TypeError, r"per_sample='no' must be True or False"),
    ('BalancedCutMix alpha -0.2', BalancedCutMix, dict(alpha=-0.2), ValueError, 'alpha=-0.2 ' + ALPHA),
    ('BalancedCutMix labels 2-D not 0/1', BalancedCutMix, dict(labels=[[0, 2]]), ValueError, r"labels must be 0/1 \(multi-hot\), but hold 2"),
    ('bmx_class_mass counts negative', bmx_class_mass, dict(counts=[-1, 3]), ValueError, COUNTS_NEG),
    ('bmx_class_mass alpha 0', bmx_class_mass, dict(counts=[1, 3], alpha=0), ValueError, 'alpha=0 ' + ALPHA),
    ('bmx_class_mass q 2', bmx_class_mass, dict(counts=[1, 3], q=2), ValueError, Q_MSG),
    ('box_mask h 0', box_mask, dict(lam=torch.tensor([.5]), h=0, w=5), ValueError, r"h=0 must be a whole number of pixels ≥ 1"),
    ('box_mask w -3', box_mask, dict(lam=torch.tensor([.5]), h=5, w=-3), ValueError, r"w=-3 must be a whole number of pixels ≥ 1"),
    ('box_mask h float', box_mask, dict(lam=torch.tensor([.5]), h=5.5, w=5), ValueError, r"h=5.5 must be a whole number of pixels"),
    ('box_mask lam 2', box_mask, dict(lam=torch.tensor([2.]), h=5, w=5), ValueError, r"lam must hold area shares, numbers in \[0, 1\]"),
    ('box_mask lam nan', box_mask, dict(lam=torch.tensor([NAN]), h=5, w=5), ValueError, r"lam must hold area shares, numbers in \[0, 1\]"),
    # --- sampling.py
    ('check_labels n_classes str', check_labels, dict(labels=[0, 1], n_classes='3'), ValueError, "n_classes='3' must be a whole number ≥ 1"),
    ('check_labels n_classes 0', check_labels, dict(labels=[0, 1], n_classes=0), ValueError, "n_classes=0 must be a whole number ≥ 1"),
    ('check_labels one-hot', check_labels, dict(labels=[[0, 1], [1, 0]]), ValueError, r"must hold one class index per item.*shape \(2, 2\)"),
    ('check_labels float', check_labels, dict(labels=[0.5, 1.2]), TypeError, r"labels are floats \(float64\): regression targets"),
    ('check_labels beyond vocab', check_labels, dict(labels=[0, 5], n_classes=3), ValueError, r"class index 5, beyond the vocabulary of 3"),
    ('check_labels empty', check_labels, dict(labels=[]), ValueError, r"labels is empty"),
    ('check_q str', check_q, dict(q='a'), ValueError, Q_MSG),
    ('check_counts negative', check_counts, dict(counts=[1, -2]), ValueError, COUNTS_NEG),
    ('check_counts 2-D', check_counts, dict(counts=[[1, 2]]), ValueError, COUNTS_1D),
    ('check_counts str', check_counts, dict(counts=['a', 'b']), TypeError, r"counts must be numbers of items, got dtype <U1"),
    ('check_counts all 0', check_counts, dict(counts=[0, 0]), ValueError, r"Every count is 0"),
    ('check_counts fraction', check_counts, dict(counts=[1, 0.5]), ValueError, r"counts must be whole numbers of items"),
    ('class_probs q -1', class_probs, dict(counts=[1, 2], q=-1), ValueError, Q_MSG),
    ('class_probs counts nan', class_probs, dict(counts=[1, NAN]), ValueError, COUNTS_NEG),
    ('sampling_probs q 2', sampling_probs, dict(labels=[0, 1], q=2), ValueError, Q_MSG),
    ('sampling_probs labels empty', sampling_probs, dict(labels=[]), ValueError, r"labels is empty"),
    ('resampled_dl not a TfmdDL', resampled_dl, dict(dl=[1, 2, 3]), TypeError, r"resampled_dl needs a fastai TfmdDL.*got list"),
    ('resampled_dl q str', resampled_dl_, dict(q='a'), ValueError, Q_MSG),
    ('resampled_dl labels length', resampled_dl_, dict(labels=[0, 1]), ValueError, r"Got 2 labels for a dataset of 20 items"),
    ('resampled_dl one class', resampled_dl_, dict(labels=[0] * 20), ValueError, r"only one class"),
    ('DataLoaders.resampled q 5', resampled_dls, dict(q=5), ValueError, Q_MSG),
    ('ResampledDL wgts length', resampled_DL, dict(wgts=np.ones(50)), ValueError, WGTS_SHAPE + r"; got shape \(50,\)"),
    ('ResampledDL wgts 2-D', resampled_DL, dict(wgts=np.ones((20, 2))), ValueError, WGTS_SHAPE + r"; got shape \(20, 2\)"),
    ('ResampledDL wgts negative', resampled_DL, dict(wgts=-np.ones(20)), ValueError, r"wgts must be finite and ≥ 0"),
    ('ResampledDL wgts nan', resampled_DL, dict(wgts=np.r_[np.ones(19), NAN]), ValueError, r"wgts must be finite and ≥ 0"),
    ('ResampledDL wgts all 0', resampled_DL, dict(wgts=np.zeros(20)), ValueError, r"Every weight in wgts is 0"),
    ('ResampledDL wgts str', resampled_DL, dict(wgts=np.array(['a'] * 20)), TypeError, r"wgts must be numbers"),
    # --- losses.py
    ('WeightedFocalLoss gamma -1', WeightedFocalLoss, dict(gamma=-1), ValueError, 'gamma=-1 ' + GAMMA),
    ('WeightedFocalLoss gamma str', WeightedFocalLoss, dict(gamma='2'), ValueError, "gamma='2' " + GAMMA),
    ('WeightedFocalLoss weight negative', WeightedFocalLoss, dict(weight=[1, -1]), ValueError, r"weight must be finite and >= 0"),
    ('WeightedFocalLoss weight 2-D', WeightedFocalLoss, dict(weight=[[1, 2]]), ValueError, r"weight must hold one number per class"),
    ('WeightedFocalLoss weight str', WeightedFocalLoss, dict(weight=['a', 'b']), TypeError, r"weight must hold numbers, one weight per class"),
    ('WeightedFocalLoss reduction', WeightedFocalLoss, dict(reduction='avg'), ValueError, REDUCTION),
    ('WeightedFocalLossFlat reduction', WeightedFocalLossFlat, dict(reduction='avg'), ValueError, REDUCTION),
    ('WeightedFocalLossFlat gamma nan', WeightedFocalLossFlat, dict(gamma=NAN), ValueError, 'gamma=nan ' + GAMMA),
    ('WeightedFocalLossFlat axis str', WeightedFocalLossFlat, dict(axis='1'), TypeError, r"axis='1' must be an int, the class axis"),
    ('check_beta 1', check_beta, dict(beta=1), ValueError, 'beta=1 ' + BETA),
    ('cb_weights counts negative', cb_weights, dict(class_counts=[1, -1]), ValueError, COUNTS_NEG),
    ('cb_weights beta -0.1', cb_weights, dict(class_counts=[1, 2], beta=-0.1), ValueError, 'beta=-0.1 ' + BETA),
    ('class_counts n_classes -1', class_counts, dict(dl_or_labels=[0, 1], n_classes=-1), ValueError, N_CLASSES),
    ('class_counts n_classes 2.5', class_counts, dict(dl_or_labels=[0, 1], n_classes=2.5), ValueError, N_CLASSES),
    ('ClassBalancedLoss counts negative', ClassBalancedLoss, dict(class_counts=[5, -1]), ValueError, COUNTS_NEG),
    ('ClassBalancedLoss counts 2-D', ClassBalancedLoss, dict(class_counts=[[5, 1]]), ValueError, COUNTS_1D),
    ('ClassBalancedLoss counts empty', ClassBalancedLoss, dict(class_counts=[]), ValueError, COUNTS_1D),
    ('ClassBalancedLoss counts fraction', ClassBalancedLoss, dict(class_counts=[5, .5]), ValueError, r"counts must be whole numbers"),
    ('ClassBalancedLoss beta 1', ClassBalancedLoss, dict(class_counts=[5, 3], beta=1), ValueError, 'beta=1 ' + BETA),
    ('ClassBalancedLoss gamma -1', ClassBalancedLoss, dict(class_counts=[5, 3], gamma=-1), ValueError, 'gamma=-1 ' + GAMMA),
    ('ClassBalancedLoss reduction', ClassBalancedLoss, dict(class_counts=[5, 3], reduction='avg'), ValueError, REDUCTION),
    ('ClassBalancedLoss axis float', ClassBalancedLoss, dict(class_counts=[5, 3], axis=1.), TypeError, r"axis=1.0 must be an int"),
    ('ClassBalancedLoss.from_dl n_classes', cb_from_dl, dict(n_classes=-2), ValueError, N_CLASSES),
    ('DeferredReweight start 2', DeferredReweight, dict(start=2), ValueError, r"start=2 must be a fraction of training in \[0, 1\]"),
    ('DeferredReweight beta 1', DeferredReweight, dict(beta=1), ValueError, 'beta=1 ' + BETA),
    ('DeferredReweight counts negative', DeferredReweight, dict(class_counts=[5, -1]), ValueError, COUNTS_NEG),
    ('DeferredReweight counts 2-D', DeferredReweight, dict(class_counts=[[5, 1]]), ValueError, COUNTS_1D),
    ('DeferredReweight counts str', DeferredReweight, dict(class_counts='abc'), ValueError, COUNTS_1D),
    ('DeferredReweight counts length', fit_drw, dict(start=0.5, class_counts=[5, 1]), ValueError,
     r"DeferredReweight has 2 class counts but the model outputs 3 classes"),
    # --- adjust.py
    ('check_tau nan', check_tau, dict(tau=NAN), ValueError, 'tau=nan ' + TAU),
    ('log_prior zero count', log_prior, dict(class_counts=[5, 0]), ValueError, r"Classes \[1\] have no training items"),
    ('log_prior negative', log_prior, dict(class_counts=[5, -1]), ValueError, COUNTS_NEG),
    ('LogitAdjustedCE reduction', LogitAdjustedCE, dict(class_counts=[5, 3], reduction='avg'), ValueError, REDUCTION),
    ('LogitAdjustedCE tau -1', LogitAdjustedCE, dict(class_counts=[5, 3], tau=-1), ValueError, 'tau=-1 ' + TAU),
    ('LogitAdjustedLoss counts negative', LogitAdjustedLoss, dict(class_counts=[5, -3]), ValueError, COUNTS_NEG),
    ('LogitAdjustedLoss counts 2-D', LogitAdjustedLoss, dict(class_counts=[[5, 3]]), ValueError, COUNTS_1D),
    ('LogitAdjustedLoss zero count', LogitAdjustedLoss, dict(class_counts=[5, 0]), ValueError, r"no training items"),
    ('LogitAdjustedLoss tau nan', LogitAdjustedLoss, dict(class_counts=[5, 3], tau=NAN), ValueError, 'tau=nan ' + TAU),
    ('LogitAdjustedLoss reduction', LogitAdjustedLoss, dict(class_counts=[5, 3], reduction='avg'), ValueError, REDUCTION),
    ('LogitAdjustedLoss axis str', LogitAdjustedLoss, dict(class_counts=[5, 3], axis='x'), TypeError, r"axis='x' must be an int"),
    ('posthoc_adjust tau -1', posthoc_adjust, dict(probs=PROBS, class_counts=[5, 3, 2], tau=-1), ValueError, 'tau=-1 ' + TAU),
    ('posthoc_adjust tau nan', posthoc_adjust, dict(probs=PROBS, class_counts=[5, 3, 2], tau=NAN), ValueError, 'tau=nan ' + TAU),
    ('posthoc_adjust tau str', posthoc_adjust, dict(probs=PROBS, class_counts=[5, 3, 2], tau='1'), ValueError, "tau='1' " + TAU),
    ('posthoc_adjust counts length', posthoc_adjust, dict(probs=PROBS, class_counts=[5, 3]), ValueError,
     r"probs have shape \(30, 3\): expected \(N, 2\), one column per class"),
    ('posthoc_adjust counts negative', posthoc_adjust, dict(probs=PROBS, class_counts=[5, 3, -1]), ValueError, COUNTS_NEG),
    ('posthoc_adjust probs 1-D', posthoc_adjust, dict(probs=np.ones(3) / 3, class_counts=[5, 3, 1]), ValueError,
     r"probs have shape \(3,\): expected \(N, 3\)"),
    ('posthoc_adjust probs nan', posthoc_adjust, dict(probs=np.full((2, 3), NAN), class_counts=[5, 3, 1]), ValueError,
     r"probs must be probabilities in \[0, 1\]"),
    ('posthoc_adjust logits', posthoc_adjust, dict(probs=np.linspace(-3, 3, 12).reshape(4, 3), class_counts=[5, 3, 1]), ValueError,
     r"probs must be probabilities in \[0, 1\], got values in \[-3.0, 3.0\].*not logits"),
    ('posthoc_adjust probs str', posthoc_adjust, dict(probs=np.array([['a', 'b', 'c']]), class_counts=[5, 3, 1]), TypeError,
     r"probs must be numbers"),
    ('tune_tau 10 columns, 5 counts', tune_tau, dict(valid_probs=np.full((30, 10), .1), valid_targs=TARGS, class_counts=[5] * 5,
     metric=balanced_accuracy), ValueError, r"valid_probs have shape \(30, 10\): expected \(N, 5\)"),
    ('tune_tau targs length', tune_tau, dict(valid_probs=PROBS, valid_targs=TARGS[:20], class_counts=[5, 3, 2], metric=acc),
     ValueError, r"valid_targs has 20 items but valid_probs has 30 rows"),
    ('tune_tau targs beyond columns', tune_tau, dict(valid_probs=PROBS, valid_targs=np.arange(30) % 5, class_counts=[5, 3, 2],
     metric=acc), ValueError, r"valid_targs contain class index 4, beyond the vocabulary of 3 classes"),
    ('tune_tau targs one-hot', tune_tau, dict(valid_probs=PROBS, valid_targs=np.eye(3, dtype=int)[TARGS], class_counts=[5, 3, 2],
     metric=acc), ValueError, r"valid_targs must hold one class index per item"),
    ('tune_tau targs negative', tune_tau, dict(valid_probs=PROBS, valid_targs=TARGS - 1, class_counts=[5, 3, 2], metric=acc),
     ValueError, r"valid_targs contain the negative class index -1"),
    ('tune_tau taus negative', tune_tau, dict(valid_probs=PROBS, valid_targs=TARGS, class_counts=[5, 3, 2], metric=acc, taus=(-1, 0)),
     ValueError, 'tau=-1 ' + TAU),
    ('tune_tau taus str', tune_tau, dict(valid_probs=PROBS, valid_targs=TARGS, class_counts=[5, 3, 2], metric=acc, taus=('a',)),
     ValueError, "tau='a' " + TAU),
    ('tune_tau taus empty', tune_tau, dict(valid_probs=PROBS, valid_targs=TARGS, class_counts=[5, 3, 2], metric=acc, taus=()),
     ValueError, r"taus is empty"),
    ('tune_tau metric str', tune_tau, dict(valid_probs=PROBS, valid_targs=TARGS, class_counts=[5, 3, 2], metric='mcc'),
     TypeError, r"metric='mcc' must be a function `metric\(probs, targs\) -> float`"),
    ('tune_tau metric nan', tune_tau, dict(valid_probs=PROBS, valid_targs=TARGS, class_counts=[5, 3, 2], metric=lambda p, t: NAN),
     ValueError, r"metric gave \[nan.*for every τ: it must return a finite score"),
    # --- paired.py
    ('paired_differences metric', paired_differences, dict(probs=PREDS, ref_probs=PREDS, targs=TARGS, metric='auc'), ValueError,
     r"metric='auc': use one of"),
    ('paired_differences seeds differ', paired_differences, dict(probs=PREDS, ref_probs=PREDS[:1], targs=TARGS), ValueError,
     r"2 runs of the method and 1 of the reference: pair them by seed"),
    ('paired_differences no runs', paired_differences, dict(probs=[], ref_probs=[], targs=TARGS), ValueError, r"at least one pair"),
    ('paired_differences ragged runs', paired_differences, dict(probs=[PREDS[0], PREDS[1][:20]], ref_probs=PREDS, targs=TARGS, n=5),
     ValueError, r"probs\[1\] " + PAIR_LEN),
    ('paired_differences runs longer than targs', paired_differences, dict(probs=PREDS, ref_probs=PREDS, targs=TARGS[:20], n=5),
     ValueError, r"probs\[0\] has 30 predictions for 20 targets"),
    ('paired_differences ref run longer', paired_differences, dict(probs=PREDS, ref_probs=[PREDS[0], np.r_[PREDS[1], 0]], targs=TARGS, n=5),
     ValueError, r"ref_probs\[1\] has 31 predictions for 30 targets"),
    ('paired_differences columns differ', paired_differences, dict(probs=[np.eye(3)[p] for p in PREDS],
     ref_probs=[np.eye(4)[p] for p in PREDS], targs=TARGS, n=5), ValueError, r"probabilities have \[3, 4\] columns"),
    ('paired_differences targs beyond columns', paired_differences, dict(probs=[np.eye(3)[p] for p in PREDS],
     ref_probs=[np.eye(3)[p] for p in PREDS], targs=np.arange(30) % 4, n=5), ValueError, r"targs hold class index 3, but the probabilities have only 3"),
    ('paired_differences targs one-hot', paired_differences, dict(probs=PREDS, ref_probs=PREDS, targs=np.eye(3)[TARGS], n=5),
     ValueError, r"targs must hold one class index per item"),
    ('paired_differences targs float', paired_differences, dict(probs=PREDS, ref_probs=PREDS, targs=TARGS + .5, n=5),
     TypeError, r"targs are floats"),
    ('paired_differences targs negative', paired_differences, dict(probs=PREDS, ref_probs=PREDS, targs=TARGS - 1, n=5),
     ValueError, r"targs contain the negative class index -1"),
    ('paired_differences targs empty', paired_differences, dict(probs=[np.zeros(0, int)], ref_probs=[np.zeros(0, int)],
     targs=np.zeros(0, int), n=5), ValueError, r"targs is empty"),
    ('paired_differences preds negative', paired_differences, dict(probs=[p - 1 for p in PREDS], ref_probs=PREDS, targs=TARGS, n=5),
     ValueError, r"probs\[0\] contain the negative class index -1"),
    ('paired_differences preds float', paired_differences, dict(probs=[p + .5 for p in PREDS], ref_probs=PREDS, targs=TARGS, n=5),
     TypeError, r"probs\[0\] holds floats: pass class indices \(N,\) as ints, or probabilities \(N, C\)"),
    ('paired_differences probs 3-D', paired_differences, dict(probs=[np.zeros((30, 3, 2))] * 2, ref_probs=PREDS, targs=TARGS, n=5),
     ValueError, r"probs\[0\] has shape \(30, 3, 2\): pass a list"),
    ('paired_differences probs nan', paired_differences, dict(probs=[np.full((30, 3), NAN)] * 2, ref_probs=PREDS, targs=TARGS, n=5),
     ValueError, r"probs\[0\] must hold finite probabilities"),
    ('paired_differences one array, not a list', paired_differences, dict(probs=PREDS[0], ref_probs=PREDS[1], targs=TARGS, n=5),
     ValueError, r"probs\[0\] has shape \(\): pass a list with, for each seed"),
    ('paired_differences n 0', paired_differences, dict(probs=PREDS, ref_probs=PREDS, targs=TARGS, n=0), ValueError,
     r"n=0 must be an integer >= 2"),
    ('paired_differences n 2.5', paired_differences, dict(probs=PREDS, ref_probs=PREDS, targs=TARGS, n=2.5), ValueError,
     r"n=2.5 must be an integer >= 2"),
    ('paired_differences seed str', paired_differences, dict(probs=PREDS, ref_probs=PREDS, targs=TARGS, seed='a'), ValueError,
     r"seed='a' must be an integer >= 0"),
    ('paired_interval ci 1.5', paired_interval, dict(diffs=np.r_[.1, .2], boot=BOOT, ci=1.5), ValueError, r"ci=1.5 must be a coverage in \(0, 1\)"),
    ('paired_interval ci 0', paired_interval, dict(diffs=np.r_[.1, .2], boot=BOOT, ci=0), ValueError, r"ci=0 must be a coverage"),
    ('paired_interval boot seeds differ', paired_interval, dict(diffs=np.r_[.1, .2], boot=np.zeros((5, 3))), ValueError,
     BOOT_SHAPE + r".*got shape \(5, 3\)"),
    ('paired_interval boot 1-D', paired_interval, dict(diffs=np.r_[.1, .2], boot=np.zeros(5)), ValueError, BOOT_SHAPE),
    ('paired_interval boot one row', paired_interval, dict(diffs=np.r_[.1, .2], boot=np.zeros((1, 2))), ValueError, BOOT_SHAPE),
    ('paired_interval diffs empty', paired_interval, dict(diffs=np.zeros(0), boot=np.zeros((5, 0))), ValueError,
     r"diffs must hold one difference per seed, shape \(S,\).*got shape \(0,\)"),
    ('paired_interval diffs 2-D', paired_interval, dict(diffs=np.zeros((2, 2)), boot=BOOT), ValueError, r"diffs must hold one difference per seed"),
    ('paired_interval diffs nan', paired_interval, dict(diffs=np.r_[.1, NAN], boot=BOOT), ValueError, r"diffs and boot must be finite"),
    # --- retrain.py
    ('retrain_classifier not a Learner', retrain_classifier, dict(learn=nn.Linear(2, 2)), TypeError,
     r"learn must be a fastai Learner .*got Linear"),
    ('retrain_classifier epochs 0', crt, dict(epochs=0), ValueError, r"epochs=0 must be a whole number >= 1"),
    ('retrain_classifier epochs -1', crt, dict(epochs=-1), ValueError, r"epochs=-1 must be a whole number >= 1"),
    ('retrain_classifier epochs 1.5', crt, dict(epochs=1.5), ValueError, r"epochs=1.5 must be a whole number >= 1"),
    ('retrain_classifier lr 0', crt, dict(lr=0), ValueError, r"lr=0 must be a finite learning rate > 0"),
    ('retrain_classifier lr -1', crt, dict(lr=-1e-3), ValueError, r"lr=-0.001 must be a finite learning rate > 0"),
    ('retrain_classifier lr nan', crt, dict(lr=NAN), ValueError, r"lr=nan must be a finite learning rate > 0"),
    ('retrain_classifier q 2', crt, dict(q=2), ValueError, Q_MSG),
    ('retrain_classifier monitor', crt, dict(monitor='mcc'), ValueError, r"monitor='mcc' is no column of the recorder: use one of \['train_loss', 'valid_loss'\]"),
    ('retrain_classifier comp str', crt, dict(comp='greater'), TypeError, r"comp='greater' must be np.greater, np.less or None"),
    ('retrain_classifier fname int', crt, dict(fname=3), TypeError, r"fname=3 must be a file name"),
    ('retrain_classifier labels length', crt, dict(labels=[0, 1]), ValueError, r"Got 2 labels for a dataset of 60 items"),
    ('retrain_classifier one group', crt_one_group, dict(labels=[i % 2 for i in range(20)]), ValueError, r"one parameter group"),
]


@pytest.mark.parametrize('func,kwargs,exc,msg', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_argument_fails_at_call_time_with_a_message(func, kwargs, exc, msg):
    with pytest.raises(exc, match=msg): func(**kwargs)


def test_valid_arguments_still_work():
    cb = BalancedMixUp(0.2, per_sample=np.bool_(True), q=0.5, labels=torch.tensor([0, 1, 1]), stop=0.5)
    assert cb.per_sample is True and cb.q == 0.5 and list(cb.labels) == [0, 1, 1]
    assert BalancedCutMix(1.).per_sample is False
    fct.test_eq(box_mask([0.25, 1.], 4, 4).shape, (2, 1, 4, 4))
    fct.test_eq(box_mask(torch.tensor(0.), np.int64(3), 5).sum(), 0)
    fct.test_eq(check_labels([0, 1], n_classes=np.int64(2)), [0, 1])
    dl = ResampledDL(DS, bs=4, shuffle=True, wgts=np.r_[0, np.ones(19)])  # a weight of 0 never draws its item
    assert 0 not in dl.get_idxs() and len(dl.new().wgts) == 20
    fct.test_eq(WeightedFocalLossFlat(axis=np.int64(1), reduction='sum').axis, 1)
    fct.test_eq(DeferredReweight(class_counts=np.array([3, 2])).counts, [3., 2.])
    p = torch.softmax(torch.randn(6, 3), 1)
    fct.test_close(posthoc_adjust(p.half(), [5, 5, 5]), p, eps=1e-2)  # float16 probabilities; a uniform prior changes nothing
    fct.test_eq(posthoc_adjust(np.zeros((0, 3)), [5, 3, 1]).shape, (0, 3))
    best, scores = tune_tau(PROBS, TARGS, [5, 3, 2], lambda p, t: NAN if float(p[0, 0]) > .3 else 1., taus=np.array([0., 1.]))
    assert best == 1. and math.isnan(scores[0.])  # a NaN score is never the best
    d, boot = paired_differences(np.stack(PREDS), np.stack(PREDS[::-1]), torch.tensor(TARGS), n=20)  # (S, N) stacks, tensor targs
    fct.test_eq((d.shape, boot.shape), ((2,), (20, 2)))
    ci = paired_interval(d, boot)
    assert ci['lo'] <= ci['diff'] <= ci['hi'] and ci['seeds'] == 2


@pytest.mark.parametrize('kwargs', [dict(q=2), dict(labels=[0, 1]), dict(monitor='mcc'), dict(lr=0)])
def test_bad_crt_argument_leaves_the_learner_as_it_was(kwargs):
    "The head is only re-initialised once every argument is known to be good"
    learn = crt_learner()
    head, dls = [p.detach().clone() for p in learn.model[1].parameters()], learn.dls
    with pytest.raises((ValueError, TypeError)): retrain_classifier(learn, **kwargs)
    for a, b in zip(head, learn.model[1].parameters()): assert torch.equal(a, b)
    assert learn.dls is dls


def test_crt_with_valid_arguments_runs(tmp_path):
    learn = crt_learner(tmp_path)
    _, y = toy_dls()
    with learn.no_bar(), learn.no_logging():
        retrain_classifier(learn, epochs=np.int64(1), lr=np.float32(1e-2), q=0.5, monitor='valid_loss', comp=np.less, fname='crt', labels=y)
    fct.test_eq(len(learn.recorder.values), 1)
    assert not list((tmp_path/'models').glob('*.pth'))


def test_deferred_reweight_with_matching_counts_fits():
    fit_drw(start=0.5, class_counts=[12, 6, 2])
