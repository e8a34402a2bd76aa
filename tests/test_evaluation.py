"Tests of fastai_bmx.evaluation: flip TTA, the per-class report, and the whole pipeline on real data"
import functools, time, warnings
import numpy as np, pandas as pd, pytest, torch
import torch.nn.functional as F
from torch import nn
import sklearn.metrics as skm
from hypothesis import given, settings, strategies as st, HealthCheck
import fastcore.test as fct
from fastai.learner import Learner
from fastai.data.core import DataLoaders
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import AccumMetric, skm_to_fastai, ActivationType
from fastai.optimizer import SGD
from fastai.callback.progress import *  # Learner.no_bar
from fastai_bmx.evaluation import *
from fastai_bmx.bootstrap import *
from fastai_bmx.bootstrap import draw_resample
import fastai_bmx.bootstrap as ev
from fastai_bmx.splits import stratified_kfold, kfold_splitter
from fastai_bmx.app.report.results import fold_summary
from fastai_bmx.app.run.training import fit_paper_recipe
from fastai_bmx.metrics import quadratic_kappa, mcc, balanced_accuracy, macro_f1, QuadraticKappa, MCC, BalancedAccuracy, MacroF1
from helpers import toy_learner, fake_preds

QK = functools.partial(skm.cohen_kappa_score, weights='quadratic')
MF1 = functools.partial(skm.f1_score, average='macro')
SK4 = {'kappa': QK, 'mcc': skm.matthews_corrcoef, 'bacc': skm.balanced_accuracy_score, 'f1': MF1}


# ---------------------------------------------------------------- flip TTA
def test_flip_tta_invariant_model_equals_get_preds():
    torch.manual_seed(0)
    learn, x, y = toy_learner(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)))
    with learn.no_bar():
        probs, targs = flip_tta(learn, flips=['h', 'v', 'hv'])
        plain, _ = learn.get_preds()
    fct.test_close(probs, plain, eps=1e-6)
    fct.test_close(probs.sum(1), torch.ones(len(x)), eps=1e-6)
    fct.test_eq(targs, y)


@pytest.mark.parametrize('flips,dims', [('h', [(-1,)]), ('v', [(-2,)]), (['h', 'hv'], [(-1,), (-2, -1)])])
def test_flip_tta_sensitive_model_is_hand_average(flips, dims):
    torch.manual_seed(1)
    learn, x, y = toy_learner(nn.Sequential(nn.Flatten(), nn.Linear(24, 3)))
    with learn.no_bar(): probs, targs, passes = flip_tta(learn, flips=flips, with_passes=True)
    with torch.no_grad():
        hand = [F.softmax(learn.model(x), -1)] + [F.softmax(learn.model(x.flip(d)), -1) for d in dims]
    fct.test_close(probs, torch.stack(hand).mean(0), eps=1e-6)
    fct.test_eq(passes.shape, (1 + len(dims), len(x), 3))
    assert (passes[0] - passes[1]).abs().max() > 1e-3  # really flip-sensitive, so the check above means something


def test_flip_tta_leaves_state_unchanged():
    torch.manual_seed(0)
    learn, x, y = toy_learner(nn.Sequential(nn.Flatten(), nn.Linear(24, 3)))
    for training in [True, False]:
        learn.model.train(training)
        cbs = [type(c) for c in learn.cbs]
        valid = learn.dls.valid
        state = (valid.shuffle, valid.drop_last, valid.bs, len(valid.after_batch.fs))
        with learn.no_bar(): flip_tta(learn, flips=['h', 'v'])
        assert learn.model.training == training
        fct.test_eq([type(c) for c in learn.cbs], cbs)
        assert learn.dls.valid is valid
        fct.test_eq((valid.shuffle, valid.drop_last, valid.bs, len(valid.after_batch.fs)), state)


def test_flip_tta_dl_argument_and_plain_torch_loss():
    "A given dl (shuffled, drop_last) gives predictions in dataset order; a loss without activation falls back to softmax"
    torch.manual_seed(0)
    learn, x, y = toy_learner(nn.Sequential(nn.Flatten(), nn.Linear(24, 3)), loss_func=nn.CrossEntropyLoss())
    dl = learn.dls.valid.new(shuffle=True, drop_last=True)
    with learn.no_bar(): probs, targs = flip_tta(learn, dl=dl)
    with torch.no_grad(): hand = (F.softmax(learn.model(x), -1) + F.softmax(learn.model(x.flip(-1)), -1)) / 2
    fct.test_close(probs, hand, eps=1e-6)
    fct.test_eq(targs, y)


def test_flip_tta_errors():
    fct.test_fail(lambda: flip_dims('x'), contains="use 'h' (horizontal)")
    ds = [(torch.arange(4), torch.tensor(0))] * 4  # integer token inputs: nothing to flip
    dls = DataLoaders.from_dsets(ds, ds, bs=2, device='cpu')
    learn = Learner(dls, nn.Sequential(nn.Embedding(4, 2), nn.Flatten(), nn.Linear(8, 2)), loss_func=CrossEntropyLossFlat())
    with learn.no_bar():
        with pytest.raises(TypeError, match='no float image-like input'): flip_tta(learn)


# ---------------------------------------------------------------- per-class report
@pytest.mark.parametrize('zd', [0.0, 1.0, np.nan])
def test_per_class_report_vs_sklearn(zd):
    t = np.array([0, 0, 1, 1, 2, 2, 2, 3, 3])
    pr = np.array([0, 1, 1, 1, 2, 0, 2, 2, 0])  # class 3 never predicted; class 4 nowhere
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        rep = per_class_report(pr, t, vocab=list('abcde'), zero_division=zd)
    ref = skm.precision_recall_fscore_support(t, pr, labels=range(5), zero_division=zd)
    fct.test_eq(rep.index.tolist(), list('abcde'))
    for col, r in zip(['precision', 'recall', 'f1', 'support'], ref):
        np.testing.assert_allclose(rep[col].values.astype(float), r.astype(float), rtol=0, atol=1e-12, equal_nan=True)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.integers(1, 60), st.integers(0, 10**6))
def test_per_class_report_property(k, n, seed):
    rng = np.random.default_rng(seed)
    probs = rng.random((n, k))
    t = rng.integers(0, k, n)
    rep = per_class_report(probs, t)
    ref = skm.precision_recall_fscore_support(t, probs.argmax(1), labels=range(k), zero_division=0.0)
    for col, r in zip(['precision', 'recall', 'f1', 'support'], ref): np.testing.assert_allclose(rep[col].values, r, atol=1e-12)


def test_per_class_report_errors():
    fct.test_fail(lambda: per_class_report([0, 1, 2], [0, 1], None), contains='must be aligned')
    fct.test_fail(lambda: per_class_report([0, 1, 2], [0, 1, 2], vocab=['a']), contains='one name per class')


# ---------------------------------------------------------------- real data
def test_real_retinamnist_pipeline(real_data, tmp_path):
    d = np.load(real_data('retinamnist.npz'))
    x = torch.tensor(d['val_images'], dtype=torch.float32).permute(0, 3, 1, 2) / 255
    y = torch.tensor(d['val_labels'][:, 0], dtype=torch.long)
    ds = list(zip((x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True), y))
    dls = DataLoaders.from_dsets(ds, ds, bs=8, device='cpu')
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 13 * 13, 5))
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), opt_func=SGD, path=tmp_path)
    with learn.no_bar(), learn.no_logging(): fit_paper_recipe(learn, n_cycles=1, cycle_len=1)
    with learn.no_bar(): probs, targs, passes = flip_tta(learn, with_passes=True)
    fct.test_eq(targs, y)
    fct.test_close(probs, passes.mean(0))
    df = bootstrap_metrics(probs, targs, SK4, n=200)
    fct.test_close(df['point'].values, [f(y.numpy(), probs.argmax(1).numpy()) for f in SK4.values()], eps=1e-12)
    rep = per_class_report(probs, targs)
    fct.test_eq(rep['support'].values, np.bincount(y.numpy(), minlength=5))

