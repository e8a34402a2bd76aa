"End to end with fastai vision: the README snippet on generated images and on real RetinaMNIST, export and reload"
import numpy as np, torch, pytest
from scipy import stats
import fastcore.test as fct
from fastai.vision.all import (ImageDataLoaders, PILImage, Resize, aug_transforms, vision_learner, resnet18, accuracy,
                               Callback, load_learner, get_image_files, set_seed)
from fastai_bmx.all import BalancedMixUp, MCC, QuadraticKappa, get_labels

@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    "A small imbalanced folder of 32 px images (48/12/4), with a class signal in the mean colour"
    path = tmp_path_factory.mktemp('imgs')
    rng = np.random.default_rng(0)
    for j, (cls, n) in enumerate(zip(('common', 'rare', 'rarest'), (48, 12, 4))):
        (path/cls).mkdir()
        for i in range(n):
            img = np.clip(rng.normal(60 + 60*j, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            PILImage.create(img).save(path/cls/f'{i}.png')
    return path

class PartnerLog(Callback):
    order, run_valid = 1, False
    def before_fit(self): self.y = []
    def before_batch(self): self.y.append(self.learn.balanced_mix_up.yb1[0].cpu())

def test_vision_learner_end_to_end(image_folder, tmp_path):
    dls = ImageDataLoaders.from_folder(image_folder, valid_pct=0.25, seed=0, bs=8, num_workers=0,
                                       item_tfms=Resize(32), batch_tfms=aug_transforms(size=32))
    learn = vision_learner(dls, resnet18, pretrained=False, metrics=[accuracy, MCC()], cbs=[BalancedMixUp(0.2), PartnerLog()])
    loss_func = learn.loss_func
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(1, 1e-3, freeze_epochs=1)
    assert learn.loss_func is loss_func
    assert all(np.isfinite(v) for row in learn.recorder.values for v in row)
    y = torch.cat(learn.partner_log.y).numpy()
    fct.test_eq(set(np.unique(y)), {0, 1, 2})  # the 4-item class is drawn as often as the others
    assert stats.chisquare(np.bincount(y, minlength=3)).pvalue > 1e-3
    # fastai's tta (train-time augmentations at test time) is never mixed: same result without the callback
    learn.remove_cb(PartnerLog)
    with learn.no_bar():
        set_seed(1); p_with, _ = learn.tta(n=2)
        cb = learn.balanced_mix_up
        learn.remove_cb(cb)
        set_seed(1); p_without, _ = learn.tta(n=2)
        learn.add_cb(cb)
    fct.test_close(p_with, p_without, eps=1e-6)
    # export -> load_learner -> predict; the export holds no partner loader
    learn.export(tmp_path/'bmx.pkl')
    learn2 = load_learner(tmp_path/'bmx.pkl')
    assert learn2.balanced_mix_up.partner_dl is None and learn2.balanced_mix_up.alpha == 0.2
    img = get_image_files(image_folder/'rare')[0]
    label, idx, probs = learn2.predict(img)
    fct.test_close(probs.sum(), 1., eps=1e-5)
    fct.test_close(probs, learn.predict(img)[2], eps=1e-5)  # the same model, unmixed
    learn.remove_cb(BalancedMixUp)
    learn.export(tmp_path/'plain.pkl')
    extra = (tmp_path/'bmx.pkl').stat().st_size - (tmp_path/'plain.pkl').stat().st_size
    assert extra < 20_000, f'the callback added {extra} bytes to the export'

def test_readme_snippet_on_retinamnist(real_data):
    "The README's quick start, verbatim apart from the data: a timm resnet18 from scratch on real fundus images"
    from fastai_bmx.medmnist import medmnist_dls
    set_seed(0)
    dls = medmnist_dls(real_data('retinamnist.npz'), bs=64)
    learn = vision_learner(dls, 'resnet18', pretrained=False, metrics=[QuadraticKappa(), MCC()],
                           cbs=[BalancedMixUp(0.2), PartnerLog()])
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-3)
    names = learn.recorder.metric_names
    assert 'quadratic_kappa' in names and 'mcc' in names
    vals = dict(zip(names[1:-1], learn.recorder.values[-1]))
    assert np.isfinite(vals['train_loss']) and -1 <= vals['quadratic_kappa'] <= 1
    y = torch.cat(learn.partner_log.y).numpy()
    assert len(y) >= 1000
    assert stats.chisquare(np.bincount(y, minlength=5)).pvalue > 1e-3  # balanced over the 5 grades
    counts = np.bincount(get_labels(dls.train), minlength=5)
    fct.test_eq(counts, [486, 128, 206, 194, 66])
    preds, targs = learn.get_preds(dl=dls.test)
    fct.test_eq(preds.shape, (400, 5))


def test_readme_pretrained_snippet_on_retinamnist(real_data):
    "The README's pretrained quick start: offline ImageNet weights, the data normalised once with theirs, fastai's fine_tune"
    from fastai.data.transforms import Normalize
    from fastai_bmx.medmnist import medmnist_dls
    from fastai_bmx.weights import pretrained_learner, LITE_STATS
    set_seed(0)
    dls = medmnist_dls(real_data('retinamnist.npz'), bs=64, size=64)
    learn = pretrained_learner(dls, 'efficientnet_lite0', metrics=[QuadraticKappa(), MCC()], cbs=BalancedMixUp(0.2))
    norms = [f for f in dls.train.after_batch.fs if isinstance(f, Normalize)]
    assert len(norms) == 1 and torch.allclose(norms[0].mean.flatten(), torch.tensor(LITE_STATS[0]))
    body0 = next(learn.model[0].parameters()).detach().clone()
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(1, freeze_epochs=1)
    assert not torch.equal(next(learn.model[0].parameters()), body0)  # the second stage trained the body
    fct.test_eq(len(learn.recorder.values), 1)  # fastai's recorder keeps the last fit: one epoch of every layer
    preds, targs = learn.get_preds(dl=dls.test)
    fct.test_eq(preds.shape, (400, 5))


def test_readme_findings_snippet_on_rfmid(real_data):
    "The README's multi-label snippet on the real RFMiD table, verbatim but for one epoch: findings, partner and metrics"
    from fastai_bmx.all import findings_table, findings_dls, pretrained_learner, MacroAP, MacroAUROC, flip_tta, macro_ap
    set_seed(0)
    dls = findings_dls(findings_table(real_data('rfmid_64/labels.csv')), bs=32, size=64)
    learn = pretrained_learner(dls, 'efficientnet_lite0', metrics=[MacroAP(), MacroAUROC()], cbs=BalancedMixUp(0.2))
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(1, 1e-2)
    assert learn.balanced_mix_up.multi_label
    fct.test_eq(learn.recorder.metric_names[3:5], ['macro_ap', 'macro_auroc'])
    m = macro_ap(*flip_tta(learn, dl=dls.loaders[2]))
    fct.test_eq((m.n_scored, m.n_left_out), (19, 13))  # 32 findings learned; 13 have no test positive
    assert 0 < m.value < 1 and 'over 19 findings (13 without a test positive left out)' in m.describe('test macro mAP')
