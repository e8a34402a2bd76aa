"""A small bmx-compare run: deterministic and sane on any CPU, and equal to the last bit to a run recorded on the same kind of machine

Floating-point results depend on the kernels torch and numpy pick, and those depend on the CPU (its vendor, model and
instruction sets), not only on the library versions. So the exact comparison runs only where a recorded run's versions
*and* CPU match this machine's, and skips elsewhere, saying why; what must hold everywhere is tested everywhere.

Record this machine's run (a new CPU kind, or new library versions): `python tests/app/test_golden.py`.
"""
import json, platform, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest
import fastcore.test as fct

GOLDEN = Path(__file__).parent/'golden'
METRICS = ['best_epoch', 'valid_mcc', 'quadratic_kappa', 'mcc', 'kendall_tau', 'balanced_accuracy', 'macro_f1', 'accuracy']
SCORES = METRICS[2:]  # test metrics, each in [-1, 1]


def _versions() -> dict:
    import torch, fastai, timm, sklearn
    return dict(torch=torch.__version__, fastai=fastai.__version__, timm=timm.__version__, numpy=np.__version__,
                scikit_learn=sklearn.__version__)


def _cpu() -> dict:
    "What picks the floating-point kernels: the CPU's vendor and model, and the instruction set torch dispatches to"
    import torch
    info = {}
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            k, _, v = line.partition(':')
            if k.strip() in ('vendor_id', 'model name') and k.strip() not in info: info[k.strip()] = v.strip()
    except OSError: pass
    return dict(vendor=info.get('vendor_id', platform.machine()), model=info.get('model name', platform.processor()),
                capability=torch.backends.cpu.get_cpu_capability())


def _matches(recorded:dict, here:dict) -> bool:
    "Whether every recorded field equals this machine's (a field recorded as null was not recorded, and isn't checked)"
    return all(v is None or here.get(k) == v for k, v in recorded.items())


def _command(out:Path, methods=('instance', 'focal', 'cb', 'bmx-0.2'), seeds=(0, 1)) -> list:
    settings = json.loads((GOLDEN/'digits_settings.json').read_text())
    return [str(Path(sys.executable).parent/'bmx-compare'), '--methods', *methods, '--seeds', *map(str, seeds),
            '--epochs', str(settings['epochs']), '--arch', settings['arch'], '--bs', str(settings['bs']), '--quiet',
            '--threads', '1', '--out', str(out)]


def _run(out:Path, **kw) -> pd.DataFrame:
    r = subprocess.run(_command(out, **kw), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return pd.read_csv(out/'results.csv')


@pytest.fixture(scope='module')
def digits(tmp_path_factory) -> pd.DataFrame:
    "results.csv of the golden command (instance, focal, cb and bmx-0.2 on the digits, 2 seeds, 3 epochs), run here"
    return _run(tmp_path_factory.mktemp('golden')/'digits')


def test_the_runs_are_sane_on_any_cpu(digits):
    "Every run recorded once, its best epoch within the schedule, its metrics in range and above chance"
    settings = json.loads((GOLDEN/'digits_settings.json').read_text())
    fct.test_eq(list(digits.run), [f'{m}_seed{s}' for s in (0, 1) for m in ('instance', 'focal', 'cb', 'bmx-0.2')])
    assert digits.best_epoch.between(1, settings['epochs']).all(), digits.best_epoch
    assert np.isfinite(digits[METRICS[1:]].values).all()
    assert digits[SCORES + ['valid_mcc']].apply(lambda c: c.between(-1, 1)).values.all()
    assert (digits.accuracy > 0.2).all() and (digits.valid_mcc > 0.2).all(), digits[['run', 'accuracy', 'valid_mcc']]  # 10 classes: chance is 0.1 and 0


def test_a_run_gives_the_same_metrics_again_on_the_same_machine(digits, tmp_path):
    "Determinism: two runs trained again by another command give the metrics of the first, to the last bit"
    again = _run(tmp_path/'again', methods=('instance', 'bmx-0.2'), seeds=(1,)).set_index('run')
    fct.test_eq(list(again.index), ['instance_seed1', 'bmx-0.2_seed1'])
    np.testing.assert_array_equal(again[METRICS].values, digits.set_index('run').loc[again.index, METRICS].values)


def test_same_results_as_recorded_on_this_kind_of_machine(digits):
    "Every metric of results.csv as recorded, where a golden run was recorded with these versions on this kind of CPU"
    here = dict(versions=_versions(), cpu=_cpu())
    recorded = json.loads((GOLDEN/'recorded.json').read_text())
    same = [g for g in recorded if g['versions'] == here['versions'] and _matches(g['cpu'], here['cpu'])]
    if not same:
        pytest.skip(f"no golden run was recorded with this machine's library versions and CPU ({here}); recorded: "
                    f"{[{k: g[k] for k in ('versions', 'cpu')} for g in recorded]}. Another CPU or other versions pick other "
                    "floating-point kernels, so the comparison would mean nothing: record one with python tests/app/test_golden.py")
    old = pd.read_csv(GOLDEN/same[0]['results'])
    fct.test_eq(list(digits.run), list(old.run))
    fct.test_eq(list(digits.method), list(old.method))
    np.testing.assert_allclose(digits[METRICS].values, old[METRICS].values, rtol=0, atol=1e-9)


def test_a_recorded_cpu_matches_only_its_own_kind():
    amd, intel = dict(vendor='AuthenticAMD', model=None, capability=None), dict(vendor='GenuineIntel', model='Xeon', capability='AVX512')
    assert _matches(amd, dict(vendor='AuthenticAMD', model='AMD EPYC 7B13', capability='AVX2'))
    assert not _matches(amd, intel) and _matches(intel, intel)
    assert not _matches(intel, {**intel, 'capability': 'AVX2'}) and not _matches(intel, {**intel, 'model': 'Xeon Gold'})


def record(out:Path):
    "Run the golden command here and add its results.csv, with this machine's versions and CPU, to golden/recorded.json"
    import tempfile
    with tempfile.TemporaryDirectory() as d: res = _run(Path(d)/'digits')
    here, recorded = dict(versions=_versions(), cpu=_cpu()), json.loads((GOLDEN/'recorded.json').read_text())
    name = f"digits_results_{here['cpu']['vendor'].lower()}_{here['cpu']['capability'].lower()}.csv"
    if (out/name).exists(): name = name.replace('.csv', f'_{len(recorded)}.csv')
    res[['run', 'seed', 'fold', 'method'] + METRICS].to_csv(out/name, index=False)
    recorded.append(dict(results=name, **here, note='recorded with python tests/app/test_golden.py'))
    (out/'recorded.json').write_text(json.dumps(recorded, indent=1) + '\n')
    print(f"recorded {name} for {here}")


if __name__ == '__main__': record(GOLDEN)
