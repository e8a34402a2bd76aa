"Tests of fastai_bmx.app.run.training: the paper's training recipe"
import numpy as np, pytest, torch
from torch import nn
import fastcore.test as fct
from fastai.optimizer import SGD
from fastai.callback.progress import *  # Learner.no_bar
from fastai_bmx.app.run.training import fit_paper_recipe
from helpers import toy_learner


# ---------------------------------------------------------------- paper recipe
@pytest.mark.parametrize('cycle_mult', [1, 2])
def test_fit_paper_recipe(tmp_path, cycle_mult):
    torch.manual_seed(0)
    learn, x, y = toy_learner(nn.Sequential(nn.Flatten(), nn.Linear(24, 3)), n=48)
    learn.opt_func, learn.path = SGD, tmp_path
    with learn.no_bar(), learn.no_logging():
        fit_paper_recipe(learn, n_cycles=2, cycle_len=1, lr=0.5, cycle_mult=cycle_mult, comp=np.greater)
    n_ep = 2 if cycle_mult == 1 else 3
    vals = [v[1] for v in learn.recorder.values]
    fct.test_eq(len(vals), n_ep)
    lrs, n_it = np.array(learn.recorder.lrs), len(learn.dls.train)
    fct.test_close(lrs[[0, n_it]], [0.5, 0.5])  # restart after the first (1-epoch) cycle
    assert lrs[n_it - 1] < 0.1 and lrs[-1] < 0.1
    assert (tmp_path / 'models' / 'best_model.pth').exists()
    assert np.argmax(vals) != n_ep - 1
    with learn.no_bar(): fct.test_close(learn.validate()[0], max(vals), eps=1e-5)  # worst-as-best epoch was reloaded
    fct.test_fail(lambda: fit_paper_recipe(learn, n_cycles=0), contains='>= 1')


@pytest.mark.parametrize('name', ['xresnet18', 'resnet18', 'resnet10t'])
def test_get_arch_builds_fastai_and_timm_models(name):
    "A fastai name and timm names each build a model that classifies a 28-px batch"
    from fastai.vision.learner import create_timm_model, create_vision_model
    from fastai_bmx.app.run.training import get_arch
    arch = get_arch(name)
    model = create_timm_model(arch, 7, pretrained=False)[0] if isinstance(arch, str) else create_vision_model(arch, 7, pretrained=False)
    fct.test_eq(model.eval()(torch.randn(2, 3, 28, 28)).shape, (2, 7))


def test_get_arch_names_the_fix_for_an_unknown_name():
    from fastai_bmx.app.run.training import get_arch
    fct.test_fail(lambda: get_arch('xresnet-18'), contains='timm model name')
