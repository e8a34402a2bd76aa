"The redesign of the modules above the core changed no result: a small bmx-compare run matches the one recorded before it"
import json, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest
import fastcore.test as fct

GOLDEN = Path(__file__).parent/'golden'
METRICS = ['best_epoch', 'valid_mcc', 'quadratic_kappa', 'mcc', 'kendall_tau', 'balanced_accuracy', 'macro_f1', 'accuracy']


def _versions() -> dict:
    import torch, fastai, timm, sklearn
    return dict(torch=torch.__version__, fastai=fastai.__version__, timm=timm.__version__, numpy=np.__version__,
                scikit_learn=sklearn.__version__)


def test_same_results_as_before_the_redesign(tmp_path):
    "instance, focal, cb and bmx-0.2 on the digits, 2 seeds, 3 epochs: every metric of results.csv as recorded (see golden/README.md)"
    recorded = json.loads((GOLDEN/'versions.json').read_text())
    if _versions() != recorded:  # other kernels give other floating-point results: the comparison means nothing then
        pytest.skip(f"the golden run was recorded with {recorded}, this environment has {_versions()}")
    settings = json.loads((GOLDEN/'digits_settings.json').read_text())
    cmd = [str(Path(sys.executable).parent/'bmx-compare'), '--methods', 'instance', 'focal', 'cb', 'bmx-0.2', '--seeds', '0', '1',
           '--epochs', str(settings['epochs']), '--arch', settings['arch'], '--bs', str(settings['bs']), '--quiet', '--threads', '1',
           '--out', str(tmp_path/'digits')]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    new, old = pd.read_csv(tmp_path/'digits'/'results.csv'), pd.read_csv(GOLDEN/'digits_results.csv')
    fct.test_eq(list(new.run), list(old.run))
    fct.test_eq(list(new.method), list(old.method))
    np.testing.assert_allclose(new[METRICS].values, old[METRICS].values, rtol=0, atol=1e-9)
