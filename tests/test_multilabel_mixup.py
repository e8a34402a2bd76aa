"Several findings per image: the class-aware sampler's frequencies, Balanced-MixUp on multi-hot targets, bad input"
import numpy as np, pandas as pd, torch, pytest
from torch import nn
from scipy import stats
from sklearn.metrics import average_precision_score
from fastai.data.core import DataLoaders, TfmdDL
from fastai.data.block import DataBlock, MultiCategoryBlock, TransformBlock
from fastai.data.transforms import ColReader, IndexSplitter
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat
from fastai.torch_core import set_seed
from fastai_bmx.sampling import (ResampledDL, resampled_dl, get_targets, finding_item_probs, finding_mass,
                                 sampling_groups, check_findings, class_probs)
from fastai_bmx.mixup import BalancedMixUp, BalancedCutMix, bmx_class_mass

def findings_ds(n=400, seed=0):
    "Three findings of a 3-D point: common (x0 > 0), medium (x1 > 1) and rare (x2 > 1.9), which co-occur freely"
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = (x > torch.tensor([0., 1., 1.9])).float()
    return torch.utils.data.TensorDataset(x, y)

def make_learn(cbs=(), loss_func=None, n=400, bs=32):
    set_seed(0)
    dls = DataLoaders.from_dsets(findings_ds(n), findings_ds(2000, seed=1), bs=bs, device='cpu')
    learn = Learner(dls, nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 3)),
                    loss_func=loss_func or BCEWithLogitsLossFlat(), cbs=list(cbs))
    learn.remove_cb(ProgressCallback)
    return learn

# --- the sampler ------------------------------------------------------------------------------------------------

FINDINGS = np.array([[1, 0, 0]]*20 + [[1, 1, 0]]*6 + [[0, 1, 0]]*4 + [[0, 0, 1]]*3 + [[1, 0, 1]]*1 + [[0, 0, 0]]*6)

@pytest.mark.parametrize('q', [0, .5, 1])
def test_sampler_draws_each_image_as_the_formula_says(q):
    "Per image, the draws of the loader match w_i = Σ_{j ∋ i} p_j/n_j, with p_j ∝ n_j**q (none a group of its own)"
    ds = torch.utils.data.TensorDataset(torch.zeros(len(FINDINGS), 1), torch.tensor(FINDINGS).float())
    dl = resampled_dl(TfmdDL(ds, bs=40, shuffle=True), q)
    np.random.seed(0)
    idxs = np.concatenate([dl.get_idxs() for _ in range(1000)])
    observed = np.bincount(idxs, minlength=len(FINDINGS))
    counts = np.array([27, 10, 4, 6])  # positives of the three findings, and the 6 images with none
    p = class_probs(counts, q)
    w = (FINDINGS @ (p[:3]/counts[:3])) + (FINDINGS.sum(1) == 0)*p[3]/counts[3]  # the formula, written out
    np.testing.assert_allclose(dl.wgts, w)
    assert stats.chisquare(observed, w*len(idxs)).pvalue > 1e-3
    held = (FINDINGS[idxs]).mean(0)  # the share of drawn images that hold each finding
    np.testing.assert_allclose(held, finding_mass(FINDINGS, q)['items holding it'], atol=0.01)

def test_two_stage_draw_has_the_same_image_frequencies():
    "Drawing a finding ∝ n_j**0 and then one of its images, explicitly, gives the per-image weights of the loader"
    rng = np.random.default_rng(1)
    groups = [np.flatnonzero(FINDINGS[:, j]) for j in range(3)] + [np.flatnonzero(FINDINGS.sum(1) == 0)]
    drawn = [rng.choice(groups[j]) for j in rng.integers(0, 4, 40_000)]
    observed = np.bincount(drawn, minlength=len(FINDINGS))
    assert stats.chisquare(observed, finding_item_probs(FINDINGS, 0)*len(drawn)).pvalue > 1e-3

def test_one_finding_per_image_is_the_single_label_sampler():
    labels = np.array([0]*30 + [1]*8 + [2]*2)
    from fastai_bmx.sampling import sampling_probs
    for q in (0, .5, 1): np.testing.assert_allclose(finding_item_probs(np.eye(3)[labels], q), sampling_probs(labels, q))
    np.testing.assert_array_equal(sampling_groups(np.eye(3)[labels]), labels)

def test_multicategory_block_loader_is_resampled_and_copies_keep_the_weights():
    df = pd.DataFrame({'x': np.arange(60.), 'tags': ['a']*45 + ['a b']*5 + ['c']*6 + ['']*4})
    block = DataBlock((TransformBlock(), MultiCategoryBlock()), get_x=ColReader('x'),
                      get_y=ColReader('tags', label_delim=' '), splitter=IndexSplitter([]))
    dls = block.dataloaders(df, bs=10, num_workers=0)
    bal = dls.resampled(0).train
    assert isinstance(bal, ResampledDL)
    np.testing.assert_allclose(bal.wgts, finding_item_probs(get_targets(dls.train), 0))
    np.testing.assert_allclose(bal.new().wgts, bal.wgts)
    assert len(bal.new(shuffle=False).get_idxs()) == 60

def test_class_mass_of_findings_counts_companions():
    m = bmx_class_mass(FINDINGS, 0.2, q=0)
    inst, part = FINDINGS.mean(0), finding_item_probs(FINDINGS, 0) @ FINDINGS
    np.testing.assert_allclose(m, (inst + 0.2*part)/1.2)
    assert (part > inst)[1:].all()  # the partner raises the rarer findings

# --- the callback -----------------------------------------------------------------------------------------------

class TargetLog(Callback):
    "Record the instance targets, the partner targets, λ and the targets the loss gets"
    order,run_valid = 1,False  # after BalancedMixUp
    def before_fit(self): self.rows = []
    def before_batch(self):
        cb = next(c for c in self.learn.cbs if isinstance(c, BalancedMixUp))
        self.rows.append((cb.yb1[0].clone(), cb.balanced_lam.clone(), self.y.clone()))

@pytest.mark.parametrize('per_sample', [False, True])
def test_targets_blended_and_loss_kept(per_sample):
    learn = make_learn([BalancedMixUp(0.3, per_sample=per_sample), TargetLog()])
    y_inst = []
    class Before(Callback):
        order,run_valid = -1,False  # before BalancedMixUp
        def before_batch(self): y_inst.append(self.y.clone())
    learn.add_cb(Before())
    with learn.no_logging(): learn.fit(1)
    assert learn.balanced_mix_up.multi_label and isinstance(learn.loss_func, BCEWithLogitsLossFlat)
    for yi,(yc,lam,y) in zip(y_inst, learn.target_log.rows, strict=True):
        lam = lam.reshape(-1, 1) if per_sample else lam
        torch.testing.assert_close(y, (1-lam)*yi + lam*yc)
        assert ((y > 0) & (y < 1)).any() or (lam == 0).all() or (lam == 1).all() or torch.equal(yi, yc)

def test_cutmix_blends_targets_by_the_box_share():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, 4, 4, generator=g)
    ds = torch.utils.data.TensorDataset(x, (x.mean((2, 3)) > torch.tensor([0., .3, .5])).float())
    learn = Learner(DataLoaders.from_dsets(ds, ds, bs=16, device='cpu'), nn.Sequential(nn.Flatten(), nn.Linear(48, 3)),
                    loss_func=BCEWithLogitsLossFlat(), cbs=[BalancedCutMix(1., per_sample=True), TargetLog()])
    learn.remove_cb(ProgressCallback)
    y_inst = []
    class Before(Callback):
        order,run_valid = -1,False
        def before_batch(self): y_inst.append(self.y.clone())
    learn.add_cb(Before())
    with learn.no_logging(): learn.fit(1)
    for yi,(yc,share,y) in zip(y_inst, learn.target_log.rows, strict=True):
        torch.testing.assert_close(y, (1-share[:, None])*yi + share[:, None]*yc)
    assert learn.balanced_cut_mix.multi_label

def test_balanced_mixup_learns_a_multilabel_task():
    "Trained with Balanced-MixUp and BCE, every finding is ranked well on 2,000 points, the rare one (11 positives) too"
    learn = make_learn([BalancedMixUp(0.2)])
    with learn.no_logging(): learn.fit(15, 1e-2)
    probs, targs = learn.get_preds()
    ap = [average_precision_score(targs[:, j], probs[:, j]) for j in range(3)]
    prior = targs.mean(0).tolist()
    assert prior[2] < 0.05 and ap[0] > 0.95 and ap[1] > 0.9 and ap[2] > 0.6, (ap, prior)  # rare: 0.77, chance 0.03

def test_validation_is_not_mixed():
    learn = make_learn([BalancedMixUp(0.2)])
    with learn.no_logging(): learn.fit(1)
    probs, targs = learn.get_preds()
    assert set(targs.unique().tolist()) <= {0., 1.}
    torch.testing.assert_close(probs, torch.sigmoid(learn.model(learn.dls.valid_ds.tensors[0])).detach())

def test_vision_learner_multicategory_zero_config(tmp_path):
    from fastai.vision.all import ImageDataLoaders, vision_learner, resnet18, PILImage
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        PILImage.create(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path/f'{i}.png')
        rows.append((f'{i}.png', 'a' if i < 20 else ('a b' if i < 25 else 'c'), i % 5 == 0))
    df = pd.DataFrame(rows, columns=['fname', 'tags', 'valid'])
    dls = ImageDataLoaders.from_df(df, tmp_path, label_delim=' ', valid_col='valid', bs=4, num_workers=0)
    learn = vision_learner(dls, resnet18, pretrained=False, cbs=BalancedMixUp(0.2))
    learn.remove_cb(ProgressCallback)
    with learn.no_logging(): learn.fit(1)
    assert learn.balanced_mix_up.multi_label and np.isfinite(learn.recorder.losses[-1].item())

# --- bad input, one line each -----------------------------------------------------------------------------------

def one_line(excinfo):
    "The message is one line (after the line fastai puts before an error raised inside a callback)"
    msg = str(excinfo.value).split(':\n\t')[-1]
    assert msg and '\n' not in msg, msg

@pytest.mark.parametrize('labels,err,msg', [
    ([[0, .5], [1, 0]], ValueError, r'must be 0/1 \(multi-hot\), but hold 0.5.*regression'),
    ([[0, -1], [1, 0]], ValueError, "CheXpert's -1"),
    ([[0, float('nan')], [1, 0]], ValueError, 'must be 0/1'),
    (np.zeros((3, 2, 2)), ValueError, r'one class index per item, but have shape \(3, 2, 2\)'),
    ([0.5, 1.5], TypeError, 'regression targets'),
])
def test_bad_findings_refused_in_one_line(labels, err, msg):
    with pytest.raises(err, match=msg) as e: BalancedMixUp(0.2, labels=labels)
    one_line(e)

def test_cross_entropy_with_findings_refused():
    learn = make_learn([BalancedMixUp(0.2)], loss_func=CrossEntropyLossFlat())
    with pytest.raises(TypeError, match='multi-hot findings, but the loss CrossEntropyLossFlat') as e: learn.fit(1)
    one_line(e)

def test_findings_of_the_wrong_width_or_length_refused():
    learn = make_learn([BalancedMixUp(0.2, labels=np.ones((10, 3)))])
    with pytest.raises(ValueError, match='10 labels for a dataset of 400') as e: learn.fit(1)
    one_line(e)
    ds = torch.utils.data.TensorDataset(torch.zeros(4, 1), torch.ones(4, 2))
    with pytest.raises(ValueError, match='only one group of findings') as e: resampled_dl(TfmdDL(ds, bs=2), 0)
    one_line(e)
    with pytest.raises(ValueError, match='2 columns, but the vocabulary has 3 findings'):
        check_findings(np.ones((4, 2)), n_findings=3)
