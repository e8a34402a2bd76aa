"""A comparison that survives: diverged and failed runs, damaged output folders, and bad input refused before any run.

The sweeps run through the console script, as a user calls it. Two methods that go wrong on purpose (tests/app/failing_methods.py)
are registered in that process only, by a `sitecustomize.py` on its PYTHONPATH."""
import json, math, os, re, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import fastcore.test as fct
from hypothesis import given, settings, strategies as st, HealthCheck
from fastai_bmx.app.compare import plan_compare, compare
from fastai_bmx.app.run.guard import DivergenceGuard, RunDiverged, RunFailure, loss_diverged
from fastai_bmx.app.run.store import RunFolder
from fastai_bmx.app.run.training import train_eval
from fastai_bmx.app.plan.sources import load_source

EXE = str(Path(sys.executable).parent/'bmx-compare')
TINY = ['--epochs', '1', '--arch', 'resnet10t', '--bs', '32', '--quiet', '--threads', '1']


@pytest.fixture
def plugin_env(tmp_path):
    "The environment of a `bmx-compare` process that knows the methods `nanloss` and `raises`"
    site = tmp_path/'site'; site.mkdir()
    (site/'sitecustomize.py').write_text(f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import failing_methods\n")
    return {**os.environ, 'PYTHONPATH': os.pathsep.join([str(site), os.environ.get('PYTHONPATH', '')])}


def cli(*args, env=None, timeout=900):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def test_a_failing_and_a_diverging_run_leave_the_sweep_going(tmp_path, plugin_env):
    out = tmp_path/'cmp'
    args = ['--out', out, '--methods', 'instance', 'nanloss', 'raises', '--seeds', '0', *TINY]
    r = cli(*args, env=plugin_env)
    assert r.returncode == 1, r.stderr[-3000:]  # not every run gave a result
    assert 'Traceback' not in r.stdout + r.stderr, r.stderr[-3000:]
    fct.test_eq(list(pd.read_csv(out/'results.csv').run), ['instance_seed0'])  # the others are no results
    fails = json.loads((out/'failures.json').read_text())
    fct.test_eq(sorted(fails), ['nanloss_seed0', 'raises_seed0'])
    fct.test_eq((fails['nanloss_seed0']['status'], fails['nanloss_seed0']['epoch']), ('diverged', 1))
    fct.test_eq((fails['raises_seed0']['status'], fails['raises_seed0']['error']), ('failed', 'RuntimeError'))
    assert 'nanloss_seed0: diverged, the training loss reached nan in epoch 1' in r.stdout and 'lower the learning rate, e.g. --lr 0.0002' in r.stdout
    line = r.stdout[r.stdout.index('raises_seed0: failed with RuntimeError: '):].splitlines()[0]
    assert 'injected failure: the image file vanished mid-epoch' in line, line
    assert '2 run(s) gave no result' in r.stdout and '--no-retry' in r.stdout
    md = (out/'results.md').read_text()
    assert '## Runs without a result' in md and '| nanloss_seed0 | diverged | 1 |' in md and '| raises_seed0 | failed |' in md
    assert '| nanloss |' not in md and '| raises |' not in md  # neither is a row of the table
    assert not list((out/'models').glob('*.pth')) if (out/'models').exists() else True  # no half-trained checkpoints

    r = cli(*args, '--no-retry', env=plugin_env)  # nothing trains; the failures are still reported
    assert r.returncode == 1 and '0 to go (2 that gave no result before, skipped: --no-retry)' in r.stdout, r.stdout[-2000:]

    r = cli(*args, '--debug', env=plugin_env)  # resumed: both are tried again; with --debug the first error stops the sweep, traceback and all
    assert '2 to go (2 that gave no result before, trained again)' in r.stdout, r.stdout[-2000:]
    assert r.returncode != 0 and 'Traceback' in r.stderr and 'RunDiverged' in r.stderr, r.stderr[-2000:]


def test_a_learning_rate_that_explodes_is_reported_as_diverged(tmp_path, capsys):
    out = tmp_path/'cmp'  # the case: --lr 1000 on the digits, which used to show MCC 0.00 in the table
    tbl = compare('digits', out, methods=['instance'], seeds=[0], lr=1000., epochs=1, arch='resnet10t', bs=32, show_bar=False)
    said = capsys.readouterr().out
    assert 'instance_seed0: diverged, the training loss reached' in said and 'e.g. --lr 100' in said, said[-2000:]
    assert len(tbl) == 0 and not (out/'results.csv').exists() and not (out/'results.md').exists()  # no MCC 0 in a table
    fct.test_eq(json.loads((out/'failures.json').read_text())['instance_seed0']['status'], 'diverged')


def test_a_run_that_succeeds_on_retry_replaces_its_failure(tmp_path, monkeypatch):
    import fastai_bmx.app.run.executors as executors
    out, real, calls = tmp_path/'cmp', executors.train_eval, []
    def flaky(dls, rec, method, **kw):
        calls.append(method)
        if len(calls) == 1: raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
        return real(dls, rec, method, **kw)
    monkeypatch.setattr(executors, 'train_eval', flaky)
    kw = dict(methods=['instance', 'focal'], seeds=[0], epochs=1, arch='resnet10t', bs=32, show_bar=False)
    compare('digits', out, **kw)  # the first run fails; the second still trains
    fct.test_eq(list(pd.read_csv(out/'results.csv').run), ['focal_seed0'])
    fct.test_eq(RunFolder(out).failures()['instance_seed0'].error, 'OutOfMemoryError')
    compare('digits', out, **kw)  # resumed: the failed run is retried, and this time it works
    fct.test_eq(calls, ['instance', 'focal', 'instance'])
    fct.test_eq(sorted(pd.read_csv(out/'results.csv').run), ['focal_seed0', 'instance_seed0'])
    fct.test_eq(RunFolder(out).failures(), {})
    assert not (out/'failures.json').exists() and '## Runs without a result' not in (out/'results.md').read_text()


def test_ctrl_c_still_stops_the_sweep(tmp_path, monkeypatch):
    import fastai_bmx.app.run.executors as executors
    monkeypatch.setattr(executors, 'train_eval', lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt): compare('digits', tmp_path/'cmp', methods=['instance', 'focal'], seeds=[0], epochs=1, arch='resnet10t')
    assert not (tmp_path/'cmp'/'failures.json').exists()  # an interruption is no failure of the run


def test_the_guard_stops_a_diverging_run_in_its_epoch():
    dls, rec = load_source('digits', bs=32)
    with pytest.raises(RunDiverged, match='in epoch 1'): train_eval(dls, rec, 'instance', arch='resnet10t', epochs=2, lr=1000., path='/tmp', fname='diverge_test', show_bar=False)
    row, _ = train_eval(dls, rec, 'instance', arch='resnet10t', epochs=1, lr=2e-3, path='/tmp', fname='diverge_test', show_bar=False)
    # a sane rate isn't stopped: the run ends with its epoch and finite scores (what one epoch from scratch learns
    # depends on the CPU's floating point: on one Intel Xeon it still predicted one class, MCC 0)
    assert row['best_epoch'] == 1 and all(math.isfinite(row[m]) for m in ('valid_mcc', 'mcc', 'accuracy')), row
    assert loss_diverged(float('nan'), 1.) and loss_diverged(101., 1.) and not loss_diverged(99., 0.5)
    with pytest.raises(ValueError, match='factor=1'): DivergenceGuard(1)


CSV_ARGS = ['--methods', 'instance', '--seeds', '0', '1', *TINY]

def test_a_torn_results_csv_is_repaired_and_its_run_trained_again(tmp_path):
    out = tmp_path/'cmp'
    compare('digits', out, methods=['instance'], seeds=[0, 1], epochs=1, arch='resnet10t', bs=32, show_bar=False)
    good = (out/'results.csv').read_text().splitlines()
    (out/'results.csv').write_text('\n'.join(good[:2] + [good[2][:25]]))  # the disk filled while the last row was written
    r = cli('--out', out, *CSV_ARGS)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'results.csv: 1 damaged row(s) put aside into' in r.stdout and 'results.damaged.txt' in r.stdout, r.stdout[-2000:]
    assert '1 runs already done, 1 to go' in r.stdout and 'instance_seed1: test mcc' in r.stdout
    assert good[2][:25] in (out/'results.damaged.txt').read_text()  # the torn row is kept aside, not dropped
    fct.test_eq(list(pd.read_csv(out/'results.csv').run), ['instance_seed0', 'instance_seed1'])
    fct.test_eq((out/'results.csv').read_text().splitlines()[1], good[1])  # the good row as it was


def test_foreign_rows_are_put_aside_and_a_foreign_table_refused(tmp_path, capsys):
    out, kw = tmp_path/'cmp', dict(methods=['instance'], seeds=[0], epochs=1, arch='resnet10t', bs=32, show_bar=False)
    compare('digits', out, **kw)
    rows = (out/'results.csv').read_text().splitlines()  # a row pasted in from some other tool's table
    pasted = rows[1].split(','); pasted[0], pasted[3] = 'resnet50_seed0', 'resnet50'
    (out/'results.csv').write_text('\n'.join(rows + [','.join(pasted)]) + '\n')
    capsys.readouterr()
    compare('digits', out, **kw)
    said = capsys.readouterr().out
    assert "method 'resnet50' is not one this version knows" in said and '1 runs already done, 0 to go' in said, said[-2000:]
    fct.test_eq((out/'results.csv').read_text().splitlines(), rows)
    (out/'results.csv').write_text('patient,grade\n1,3\n')  # not a comparison's table at all: refused, untouched
    with pytest.raises(ValueError, match="isn't a bmx-compare table"): plan_compare('digits', out, **kw)
    fct.test_eq((out/'results.csv').read_text(), 'patient,grade\n1,3\n')


def test_bad_input_is_refused_before_any_run(tmp_path):
    a_file = tmp_path/'a_file'; a_file.write_text('')
    cases = [(['--bs', '5000'], '--bs 5000 is more than the'), (['--out', '/sys/bmx_out'], '--out /sys/bmx_out: no folder can be made'),
             (['--bs', '700', '--folds', '5'], 'training images of a fold')]  # the others as plan_compare sees them, below
    for extra, says in cases:
        out = tmp_path/'never'
        r = cli('--out', out, '--methods', 'instance', *TINY, *extra)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert r.returncode == 2 and len(lines) == 1 and says in lines[0], (extra, r.returncode, r.stderr[-1500:])
        assert not out.exists()  # nothing written
    for kw, says in [(dict(out=a_file/'sub'), 'is a file'), (dict(size=5000), '--size 5000'), (dict(seeds=[2**32]), 'below 2**32')]:
        with pytest.raises(ValueError, match=re.escape(says)): plan_compare('digits', **{'out': tmp_path/'never', 'methods': ['instance'], **kw})
        assert not (tmp_path/'never').exists()


# ---- the property: plan_compare accepts an option set, or refuses it in one line that names an option or a file

good_or = lambda good, bad: (st.sampled_from(good) if isinstance(good, list) else good, st.sampled_from(bad) if isinstance(bad, list) else bad)
NAMES = ['instance', 'bmx-0.2', 'sqrt', 'bmx', 'la-0.5', 'sample-0.25', 'focal+la-1', 'cb', 'la', 'drw']
SPACE = {  # option -> (values that are valid alone, values that are likely not)
    'data': good_or(['digits'], ['no_such_file.npz', 'no_such_folder', 'a_file']),
    'out': good_or(['fresh', 'an_empty_dir'], ['a_file', 'a_file/sub', '/sys/bmx_out']),
    'methods': good_or(st.one_of(st.none(), st.lists(st.sampled_from(NAMES), min_size=1, max_size=3)),
                       [[], ['nosuch'], ['bmx--1'], ['sample-2'], ['instance', 'la-nan'], ['focal+cb']]),
    'alphas': good_or(st.one_of(st.none(), st.lists(st.floats(0.05, 3), min_size=1, max_size=2)), [[], [float('nan')], [-1.], [0.]]),
    'taus': good_or([None, [0., 0.5, 1.5]], [[-1.], [float('nan')], []]),
    'qs': good_or([None, [0., 0.5, 1.]], [[2.], [-0.5]]),
    'seeds': good_or(st.lists(st.integers(0, 10), min_size=1, max_size=3, unique=True), [[], [-1], [1, 1], [2**33]]),
    'folds': good_or([0, 0, 2, 3], [1, -1, 500]), 'split_seed': good_or([0, 7], [-1, 2**33]),
    'arch': good_or(['resnet10t'], ['no_such_net']), 'epochs': good_or([1, 3], [0, -1]),
    'lr': good_or(st.floats(1e-5, 1.), [0., float('nan'), float('inf'), -1.]),
    'bs': good_or([1, 8, 64, 512], [0, -3, 5000]), 'size': good_or([None, 28, 64], [0, 7, 5000]),
    'monitor': good_or([None, 'mcc', 'balanced_accuracy', 'quadratic_kappa'], ['nosuch', 'auroc']),
    'pretrained': good_or([False], [True]), 'weights': good_or([None], ['no_such_weights.pth', 'a_file']),
    'freeze_epochs': good_or([0, 1, 2], [-1]), 'reference': good_or([None, 'instance'], ['nosuch']),
    'precision': good_or(['fp32', 'bf16'], ['fp16', 'fp8']), 'frontier': good_or([False, True], [True]),
    'frontier_x': good_or(['balanced_accuracy', 'macro_f1'], ['auroc']), 'select': good_or([None, 'mcc', 'balanced_accuracy'], ['nosuch', 'auroc']),
}

@st.composite
def option_sets(draw):
    "Every option valid on its own, but for up to two drawn to be invalid: the combinations are where the surprises are"
    broken = set(draw(st.lists(st.sampled_from(list(SPACE)), max_size=2, unique=True)))
    return {k: draw(bad if k in broken else good) for k, (good, bad) in SPACE.items()}

def names_an_option(msg:str, opts:dict, out) -> bool:
    "Whether an error's one line names an option (as the flag or as the argument) or a file"
    flags = [f"--{k.replace('_', '-')}" for k in SPACE] + [f'{k}=' for k in SPACE] + [f'{k} ' for k in SPACE]
    flags += ['method', 'alpha', 'tau', 'q=', 'architecture']  # a run name's knob is named by the method that takes it
    return any(f in msg for f in flags + [str(out), opts['data'], str(opts['weights'])])

@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(opts=option_sets())
def test_plan_compare_accepts_or_names_the_option(tmp_path_factory, opts):
    root = tmp_path_factory.mktemp('plan')
    (root/'a_file').write_text(''); (root/'an_empty_dir').mkdir()
    out = opts['out'] if opts['out'].startswith('/') else root/(opts['out'] if opts['out'] != 'fresh' else 'out')
    opts = {**opts, 'out': out, 'data': str(root/opts['data']) if opts['data'] == 'a_file' else opts['data'],
            'weights': str(root/'a_file') if opts['weights'] == 'a_file' else opts['weights']}
    before = sorted(root.rglob('*'))
    try: plan = plan_compare(**opts)
    except (ValueError, TypeError, OSError, KeyError) as e:
        msg = ' '.join(str(e).split())
        assert msg and names_an_option(msg, opts, out), (opts, msg)
    else:  # an accepted plan can run: a folder can be made at --out, and every training part holds a batch
        assert plan.names and plan.seeds
        assert not str(out).startswith('/sys') and 'a_file' not in str(out), out
        n = sum(plan.rec.counts) + (len(load_source('digits')[0].valid.dataset) if plan.folds else 0)
        assert opts['bs'] <= (n - -(-n // plan.folds) if plan.folds else n), (opts['bs'], n, plan.folds)
    fct.test_eq(sorted(root.rglob('*')), before)  # nothing written, accepted or refused


def test_an_older_folders_claims_and_a_damaged_failures_file_are_taken_over(tmp_path):
    out = tmp_path/'cmp'
    (out/'.claims').mkdir(parents=True)
    (out/'.claims'/'instance_seed0').write_text('another-host 1')  # an older version's claim, of a host that can't be checked
    (out/'failures.json').write_text('{"instance_seed0": {"run": "inst')  # torn too
    compare('digits', out, methods=['instance'], seeds=[0], epochs=1, arch='resnet10t', bs=32, show_bar=False)
    fct.test_eq(list(pd.read_csv(out/'results.csv').run), ['instance_seed0'])
    assert not (out/'.claims').exists()  # one command drives a folder now: claims are gone
    assert (out/'failures.json.damaged').read_text().startswith('{"instance_seed0"')  # put aside, not dropped
    assert not (out/'failures.json').exists()


@pytest.fixture
def windows_locks(monkeypatch):
    "No `fcntl`, as on Windows, and an `msvcrt` whose `locking` keeps Windows' rule: a region held by one handle refuses the others"
    import types
    held = {}  # path -> the fd holding its byte
    def locking(fd, mode, n):
        path = os.path.realpath(f'/proc/self/fd/{fd}')
        if mode == ms.LK_UNLCK: held.pop(path, None); return
        if held.get(path, fd) != fd: raise PermissionError(13, 'Permission denied')
        held[path] = fd
    ms = types.SimpleNamespace(LK_NBLCK=2, LK_UNLCK=0, locking=locking)
    monkeypatch.setitem(sys.modules, 'fcntl', None)
    monkeypatch.setitem(sys.modules, 'msvcrt', ms)
    return held


def test_on_windows_a_second_command_on_a_folder_is_refused_too(tmp_path, windows_locks):
    from fastai_bmx.app.run.store import FolderInUse
    folder = RunFolder(tmp_path/'cmp')
    with folder.driving():
        assert windows_locks  # the lock is held, not a no-op
        with pytest.raises(FolderInUse, match='is in use by the bmx-compare of pid'): folder.check_free()
        with pytest.raises(FolderInUse, match='one command trains into a folder at a time'):
            with RunFolder(tmp_path/'cmp').driving(): pass
        with folder.lock(): pass  # the write lock, a lock of its own
    folder.check_free()  # let go at the end
    assert not windows_locks


def test_without_any_file_lock_the_folder_is_refused_plainly(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'fcntl', None)
    monkeypatch.setitem(sys.modules, 'msvcrt', None)
    with pytest.raises(OSError, match='has neither fcntl nor msvcrt'):
        with RunFolder(tmp_path/'cmp').driving(): pass
