"`bmx-compare`: the CLI end to end on the built-in digits, resuming, folds, image folders and bad input"
import json, socket, subprocess, sys, time, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import fastcore.test as fct
from PIL import Image
import fastai_bmx.app.run.executors as executors
from fastai_bmx.app.compare import compare
from fastai_bmx.app.plan.sources import load_source
from fastai_bmx.app.plan.methods import get_method
from fastai_bmx.app.report.results import results_table
from fastai_bmx.app.run.store import RunFolder
from collections import Counter
from helpers import png_table
from fastai_bmx.metrics import PAPER_METRICS
from fastai_bmx.losses import ClassBalancedLoss, WeightedFocalLossFlat
from fastai_bmx.mixup import BalancedMixUp
from fastai_bmx.sampling import ResampledDL, get_labels

warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')
TINY = dict(epochs=1, arch='resnet10t', bs=32, show_bar=False)  # seconds per run on a CPU
METRIC_NAMES = [m.name for m in PAPER_METRICS]
OUTPUTS = ['beta_densities.png', 'class_counts.png', 'confusion_matrix.png', 'per_class_recall.png', 'reliability.png', 'results.csv', 'results.md']


def test_cli_end_to_end_writes_everything_and_resumes(tmp_path):
    exe = Path(sys.executable).parent/'bmx-compare'
    assert exe.exists(), "the console script is installed by `pip install -e .` ([project.scripts] in pyproject.toml)"
    out = tmp_path/'cmp'
    cmd = [str(exe), '--out', str(out), '--methods', 'instance', 'bmx', '--alphas', '0.2', '--seeds', '0',
           '--epochs', '1', '--arch', 'resnet10t', '--bs', '32', '--quiet', '--threads', '1']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in OUTPUTS: assert (out/f).stat().st_size > 0, f
    for f in OUTPUTS[:5]: assert Image.open(out/f).size[0] > 100  # real images
    res = pd.read_csv(out/'results.csv')
    fct.test_eq(list(res.run), ['instance_seed0', 'bmx-0.2_seed0'])
    assert res[list(METRIC_NAMES)].apply(lambda c: c.between(-1, 1)).all().all()
    md = (out/'results.md').read_text()
    assert '| instance | 1 |' in md and '| bmx-0.2 | 1 |' in md and 'without flip TTA' in md  # digits: no flip
    fct.test_eq(json.loads((out/'settings.json').read_text())['monitor'], 'mcc')  # digits aren't ordered grades
    for p in (out/'preds').glob('*.npz'): fct.test_eq(set(np.load(p)), {'probs', 'targs', 'valid_probs', 'valid_targs'})
    assert '## Post-hoc logit adjustment' in md  # tuned on those validation predictions
    assert '| instance |' in r.stdout  # the table is printed too
    # a second call finds both runs done and trains nothing
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert '2 runs already done, 0 to go' in r2.stdout
    pd.testing.assert_frame_equal(pd.read_csv(out/'results.csv'), res)


def test_cli_help_lists_the_options():
    r = subprocess.run([str(Path(sys.executable).parent/'bmx-compare'), '--help'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0
    for opt in ('--data', '--methods', '--alphas', '--seeds', '--folds', '--arch', '--epochs', '--lr', '--bs', '--size',
                '--out', '--monitor', '--pretrained', '--weights', '--freeze-epochs', '--from-disk', '--channels-last'): assert opt in r.stdout, opt


def test_interrupted_comparison_keeps_finished_runs(tmp_path, monkeypatch):
    out, calls, real = tmp_path/'cmp', [], executors.train_eval
    def flaky(dls, rec, method, **kw):
        calls.append(method)
        if len(calls) == 2: raise KeyboardInterrupt  # the user presses Ctrl-C during the second run
        return real(dls, rec, method, **kw)
    monkeypatch.setattr(executors, 'train_eval', flaky)
    with pytest.raises(KeyboardInterrupt): compare('digits', out, methods=['instance', 'focal'], seeds=[0], **TINY)
    first = pd.read_csv(out/'results.csv')
    fct.test_eq(list(first.run), ['instance_seed0'])
    calls.clear()
    compare('digits', out, methods=['instance', 'focal'], seeds=[0], **TINY)
    fct.test_eq(calls, ['focal'])  # only the unfinished run trains again
    res = pd.read_csv(out/'results.csv')
    fct.test_eq(list(res.run), ['instance_seed0', 'focal_seed0'])
    pd.testing.assert_frame_equal(res.iloc[:1], first)


def test_adding_a_seed_trains_only_the_new_runs(tmp_path, monkeypatch):
    out, calls, real = tmp_path/'cmp', [], executors.train_eval
    monkeypatch.setattr(executors, 'train_eval', lambda dls, rec, m, **kw: (calls.append(m), real(dls, rec, m, **kw))[1])
    compare('digits', out, methods=['instance'], seeds=[0], **TINY)
    compare('digits', out, methods=['instance'], seeds=[0, 1], **TINY)
    fct.test_eq(len(calls), 2)
    fct.test_eq(list(pd.read_csv(out/'results.csv').run), ['instance_seed0', 'instance_seed1'])
    assert '±' in (out/'results.md').read_text()  # two seeds: mean ± std


def test_other_settings_are_refused(tmp_path):
    out = tmp_path/'cmp'
    compare('digits', out, methods=['instance'], seeds=[0], **TINY)
    before = (out/'results.csv').read_text()
    with pytest.raises(ValueError, match=r"other settings \(epochs: 1 there, 2 now\).*another --out"):
        compare('digits', out, methods=['instance'], seeds=[0], **{**TINY, 'epochs': 2})
    fct.test_eq((out/'results.csv').read_text(), before)  # nothing lost


def test_folds_report_min_median_max(tmp_path):
    out = tmp_path/'cmp'
    tbl = compare('digits', out, methods=['instance'], seeds=[0], folds=2, **TINY)
    res = pd.read_csv(out/'results.csv')
    fct.test_eq(list(res.run), ['instance_seed0_fold0', 'instance_seed0_fold1'])
    assert '←' in tbl.loc['instance', 'mcc'] and '→' in tbl.loc['instance', 'mcc']
    assert 'min ← median → max over folds' in (out/'results.md').read_text()


def test_folds_are_stratified_disjoint_and_keep_the_test_set():
    dls, _ = load_source('digits')
    n_train, n_valid = len(dls.train.dataset), len(dls.valid.dataset)
    counts = np.bincount(np.concatenate([get_labels(dls.train), get_labels(dls.valid)]))
    folds = [load_source('digits', fold=f, k=3)[0] for f in range(3)]
    valid = np.stack([np.bincount(get_labels(f.valid), minlength=10) for f in folds])
    fct.test_eq(valid.sum(0), counts)  # every pooled item validates exactly once
    assert (np.abs(valid - counts / 3) <= 1).all()  # stratified
    for f in folds:
        fct.test_eq(len(f.train.dataset) + len(f.valid.dataset), n_train + n_valid)
        fct.test_eq(get_labels(f.test), get_labels(dls.test))


def test_each_method_changes_what_it_says():
    dls, rec = load_source('digits', bs=16)
    d = get_method('class').train_dls(dls, rec)
    assert isinstance(d.train, ResampledDL)
    w = d.train.wgts.numpy() if isinstance(d.train.wgts, torch.Tensor) else np.asarray(d.train.wgts)
    y = get_labels(dls.train)
    fct.test_close(np.bincount(y, weights=w) / w.sum(), np.full(10, 0.1), eps=1e-6)  # q=0: classes equally likely
    w = np.asarray(get_method('sqrt').train_dls(dls, rec).train.wgts)
    p = np.bincount(y, weights=w) / w.sum()
    fct.test_close(p, np.sqrt(np.bincount(y)) / np.sqrt(np.bincount(y)).sum(), eps=1e-6)
    assert isinstance(get_method('focal').loss_func(rec), WeightedFocalLossFlat)
    cb = get_method('cb').loss_func(rec)
    assert isinstance(cb, ClassBalancedLoss)
    fct.test_eq(cb.class_counts, np.bincount(y))
    (bmx,) = get_method('bmx-0.3').cbs(rec)
    assert isinstance(bmx, BalancedMixUp) and bmx.alpha == 0.3
    m = get_method('instance')
    fct.test_eq((m.train_dls(dls, rec), m.loss_func(rec), m.cbs(rec)), (dls, None, []))


def _image_folder(root, splits=(('train', (10, 4)), ('valid', (3, 2)), ('test', (3, 2)))):
    g = np.random.default_rng(0)
    for split, counts in splits:
        for cls, n in zip(('common', 'rare'), counts):
            (root/split/cls).mkdir(parents=True)
            for i in range(n): Image.fromarray(g.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root/split/cls/f'{i}.png')
    return root


def test_compare_on_an_image_folder_and_a_csv(tmp_path):
    root = _image_folder(tmp_path/'imgs')
    tbl = compare(str(root), tmp_path/'cmp', methods=['bmx'], alphas=[0.2], seeds=[0], size=16, **{**TINY, 'bs': 4})
    fct.test_eq(list(tbl.index), ['bmx-0.2'])
    fct.test_eq(json.loads((tmp_path/'cmp'/'train_counts.json').read_text()), [10, 4])
    fct.test_eq(RunFolder(tmp_path/'cmp').record.counts, (10, 4))
    fct.test_eq(np.load(tmp_path/'cmp'/'preds'/'bmx-0.2_seed0.npz')['targs'].tolist(), [0, 0, 0, 1, 1])
    rows = [(str(f.relative_to(root)), f.parent.name, f.parent.parent.name) for f in sorted(root.rglob('*.png'))]
    pd.DataFrame(rows, columns=['fname', 'label', 'split']).to_csv(root/'labels.csv', index=False)
    dls, _ = load_source(str(root/'labels.csv'), size=16, bs=4)
    fct.test_eq([len(dl.dataset) for dl in dls.loaders], [14, 5, 5])


def test_a_folder_without_a_test_split_is_refused(tmp_path):
    root = _image_folder(tmp_path/'imgs', splits=(('train', (10, 4)), ('valid', (3, 2))))
    with pytest.raises(ValueError, match='no test split'): load_source(str(root), size=16)


@pytest.mark.parametrize('kwargs, msg', [
    (dict(methods=['mixup']), 'Unknown method'),
    (dict(methods=['bmx'], alphas=[0.]), 'alpha'),
    (dict(methods=['bmx'], alphas=[float('nan')]), 'alpha'),
    (dict(monitor='accuracy'), 'monitor'),
    (dict(folds=1), '--folds 1'),
    (dict(seeds=[]), 'no seeds'),
    (dict(data='missing.npz'), 'No file'),
    (dict(data='notes.txt'), "is not 'digits'"),
    (dict(arch='no_such_net'), 'Unknown architecture'),
])
def test_bad_input_fails_before_training(tmp_path, kwargs, msg):
    kw = {**dict(data='digits', methods=['instance'], seeds=[0]), **TINY, **kwargs}
    data = kw.pop('data')
    with pytest.raises(ValueError if 'No file' not in msg else FileNotFoundError, match=msg):
        compare(data, tmp_path/'cmp', **kw)
    assert not (tmp_path/'cmp'/'results.csv').exists()


def test_results_table_bolds_the_best_and_handles_one_run():
    res = pd.DataFrame(dict(run=list('abcde'), method=['x', 'x', 'y', 'y', 'z'], fold=np.nan,
                            mcc=[.5, .7, .6, .62, .1]))
    tbl = results_table(res)
    fct.test_eq(tbl.mcc.tolist(), ['60.00 ± 14.14', '**61.00 ± 1.41**', '10.00'])
    fct.test_eq(tbl.runs.tolist(), [2, 2, 1])


def test_real_retinamnist_source(real_data):
    dls, rec = load_source(str(real_data('retinamnist.npz')))
    assert rec.ordinal and rec.flip and dls.ordinal
    fct.test_eq(rec.counts, (486, 128, 206, 194, 66))
    fct.test_eq(len(dls.test.dataset), 400)
    d, rec = load_source(str(real_data('dermamnist_jpeg28.npz')))
    assert not rec.ordinal and rec.flip and rec.monitor == 'mcc'
    fct.test_eq(rec.classes, ('akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc'))


def test_a_run_recorded_twice_counts_once(tmp_path):
    "Two processes that both trained the same run: the first result stands, so the table never counts a run twice"
    folder = RunFolder(tmp_path)
    first, second = np.eye(3)[[0, 1, 2]], np.eye(3)[[2, 2, 2]]
    row = dict(run='instance_seed0', seed=0, fold=None, method='instance', mcc=0.5)
    assert folder.add_run(row, first, np.arange(3))
    assert not folder.add_run({**row, 'mcc': 0.1}, second, np.arange(3))
    res = pd.read_csv(tmp_path/'results.csv')
    fct.test_eq(list(res.run), ['instance_seed0'])
    fct.test_eq(list(res.mcc), [0.5])
    fct.test_eq(np.load(tmp_path/'preds'/'instance_seed0.npz')['probs'], first)
    assert folder.add_run({**row, 'run': 'instance_seed1', 'seed': 1}, second, np.arange(3))
    fct.test_eq(list(pd.read_csv(tmp_path/'results.csv').run), ['instance_seed0', 'instance_seed1'])


# --- bugs of the old layout, each with a test that failed before the redesign -------------------------------------

def test_flip_tta_is_the_same_for_every_method(tmp_path, monkeypatch):
    "Bug: class and sqrt sampling got flip TTA on the digits (the flag was an attribute lost by dls.resampled)"
    from fastai_bmx.evaluation import FlipCallback
    flipped, real = [], FlipCallback.before_batch
    monkeypatch.setattr(FlipCallback, 'before_batch', lambda self: (flipped.append(1), real(self))[1])
    compare('digits', tmp_path/'digits', methods=['instance', 'class', 'sqrt'], seeds=[0], **TINY)
    fct.test_eq(len(flipped), 0)  # a mirrored digit is another symbol: no method may flip
    assert 'without flip TTA' in (tmp_path/'digits'/'results.md').read_text()
    root = _image_folder(tmp_path/'imgs')
    n = []
    for m in ('instance', 'class', 'sqrt'):
        flipped.clear()
        compare(str(root), tmp_path/'imgs_cmp', methods=[m], seeds=[0], size=16, **{**TINY, 'bs': 4})
        n.append(len(flipped))
    assert n[0] > 0 and n == [n[0]] * 3, n  # images: every method flips, the same number of batches


def test_ordinal_survives_resampling_on_file_sources(tmp_path):
    "Bug: `ordinal` was a loose attribute on folder and CSV DataLoaders, lost by `.resampled()`"
    from fastai_bmx.files import folder_dls
    from fastai_bmx.data import is_ordinal
    dls = folder_dls(_image_folder(tmp_path/'imgs'), size=16, bs=4, ordinal=True)
    assert is_ordinal(dls) and is_ordinal(dls.resampled(0.)) and is_ordinal(dls.resampled(0.5))


def test_folds_depend_on_the_split_seed_not_the_training_seed(tmp_path):
    "Bug: k-fold was written three times; a folder got other folds for each training seed, the digits didn't"
    from fastai_bmx.files import folder_dls
    root = _image_folder(tmp_path/'imgs', splits=(('train', (12, 6)), ('valid', (4, 2)), ('test', (3, 2))))
    valid = lambda **kw: sorted(map(str, folder_dls(root, size=16, bs=4, in_memory=False, **kw).valid.items.fname))  # from files: items are rows
    fct.test_eq(valid(fold=1, k=3, seed=0), valid(fold=1, k=3, seed=1))
    fct.test_ne(valid(fold=1, k=3, split_seed=0), valid(fold=1, k=3, split_seed=1))
    # the same labels give the same folds for an array source and a file source
    from fastai_bmx.splits import valid_mask
    labels = np.array(['common'] * 16 + ['rare'] * 8)
    fct.test_eq(valid_mask(labels, fold=1, k=3), valid_mask((labels == 'rare').astype(int), fold=1, k=3))


def test_a_second_command_on_a_folder_is_refused_and_the_first_finishes(tmp_path):
    "One command at a time trains into a folder: a second is refused in one line naming the first, which goes on; then it resumes"
    out, exe = tmp_path/'cmp', str(Path(sys.executable).parent/'bmx-compare')
    cmd = [exe, '--out', str(out), '--methods', 'instance', 'focal', '--seeds', '0', '--epochs', '4',
           '--arch', 'resnet10t', '--bs', '32', '--quiet', '--threads', '1']  # 4 epochs: still training as the second starts
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ((out/'.driver').exists() and f'pid {first.pid} ' in (out/'.driver').read_text()):  # it holds the folder
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.2)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr[-2000:]
    line, = second.stderr.strip().splitlines()
    assert f'is in use by the bmx-compare of pid {first.pid} on {socket.gethostname()}' in line and '--executor ray' in line, line
    stdout, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    fct.test_eq(sorted(pd.read_csv(out/'results.csv').run), ['focal_seed0', 'instance_seed0'])  # the first went on, unharmed
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # free again: it resumes, with nothing to train
    assert again.returncode == 0 and '2 runs already done, 0 to go' in again.stdout, again.stderr[-2000:]


def test_a_seed_gives_every_method_the_same_start_and_batches(tmp_path, monkeypatch):
    "Pairing: same seed, same initial weights for every method, and the same batch order for those that keep instance sampling"
    import fastai_bmx.app.run.training as training
    starts, batches = {}, {}
    class Spy(training.SaveModelCallback):
        "The run's checkpointing callback, also recording the weights before the first step and the labels of the first epoch"
        def before_train(self):
            if self.epoch == 0:
                starts[self.fname], batches[self.fname] = {k: v.clone() for k, v in self.learn.model.state_dict().items()}, []
        def before_batch(self):
            if self.training and self.epoch == 0: batches[self.fname].append(self.learn.yb[0].clone())
    monkeypatch.setattr(training, 'SaveModelCallback', Spy)
    methods = ['instance', 'la', 'drw', 'bmx-0.2', 'bcutmix-1', 'class']
    compare('digits', tmp_path/'cmp', methods=methods, seeds=[0], **TINY)
    compare('digits', tmp_path/'cmp1', methods=['instance'], seeds=[1], **TINY)
    runs = [f'{m}_seed0' for m in ['la-1' if m == 'la' else m for m in methods]]
    fct.test_eq(sorted(starts), sorted(runs + ['instance_seed1']))
    ref, ref_ys = starts['instance_seed0'], torch.cat(batches['instance_seed0'])
    for r in runs:
        assert all(torch.equal(starts[r][k], ref[k]) for k in ref), f'{r} starts from other weights'
        if not r.startswith('class'): fct.test_eq(torch.cat(batches[r]), ref_ys)  # every batch in the same order
    assert not torch.equal(torch.cat(batches['class_seed0']), ref_ys)  # a resampled loader draws other batches
    conv = next(k for k, v in starts['instance_seed0'].items() if v.dim() == 4)
    assert not torch.equal(starts['instance_seed0'][conv], starts['instance_seed1'][conv])  # another seed, another start


@pytest.mark.parametrize('from_disk', [False, True])
def test_plan_compare_decodes_each_image_once(tmp_path, monkeypatch, from_disk):
    "plan_compare on a CSV: each file decoded once, for the check and the loaders (from disk, fastai's `from_df` reads its first training item again as it builds)"
    import fastai_bmx.images as images, fastai_bmx.files as files
    from fastai_bmx.app.compare import plan_compare
    (tmp_path/'data').mkdir()
    png_table(tmp_path/'data', labels=('a', 'b')).to_csv(tmp_path/'data'/'labels.csv', index=False)
    opened, read = Counter(), images.read_image
    def counted(path, window=None): opened[str(path)] += 1; return read(path, window)
    monkeypatch.setattr(images, 'read_image', counted)  # what `decode_files` and `read_pixels` (the loaders') call
    plan = plan_compare(str(tmp_path/'data'/'labels.csv'), tmp_path/'out', methods=['instance'], seeds=[0], bs=4, size=16,
                        arch='resnet10t', from_disk=from_disk)
    fct.test_eq((plan.load.in_memory, files.serves_from_memory(plan.load.load(0)[0])), (not from_disk,) * 2)
    fct.test_eq(len(opened), 24)  # every file checked
    again = {f for f, n in opened.items() if n > 1}
    assert again <= ({str(plan.load.source.files[0])} if from_disk else set()), opened
