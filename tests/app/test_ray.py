"`--executor ray`: the runs of a comparison as Ray tasks on one local cluster, the same results as the serial loop, failures and dead workers recorded"
import json, os, signal, subprocess, sys, time, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import fastcore.test as fct
import failing_methods  # registers nancounted, killedonce and killed here; the workers' setup hook registers them there
import fastai_bmx.app.run.executors as executors
from fastai_bmx.app.compare import compare, plan_compare
from fastai_bmx.app.run.executors import RayExecutor, run_spec, train_spec
from fastai_bmx.app.run.store import RunFolder

ray = pytest.importorskip('ray')
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')
TINY = dict(epochs=1, arch='resnet10t', bs=32, show_bar=False)  # seconds per run on a CPU
HERE = Path(__file__).parent


@pytest.fixture(scope='module', autouse=True)
def cluster():
    "One local Ray cluster for the module, 2 CPUs and 2 logical GPUs, whose workers import the tests' failing methods"
    path = os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')])
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, logging_level='ERROR',
             runtime_env={'env_vars': {'PYTHONPATH': path}, 'worker_process_setup_hook': 'failing_methods.ray_worker_setup'})
    yield
    ray.shutdown()


@pytest.fixture
def one_thread():
    "Torch on one thread here, as each Ray run of one CPU is, so that their results match to the bit"
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tries(out, method) -> list: return (out/'tries'/method).read_text().split()


def test_ray_records_the_same_runs_and_metrics_as_the_serial_loop(tmp_path, one_thread, capsys):
    kw = dict(methods=['instance', 'bmx'], alphas=[0.2], seeds=[0], **TINY)
    compare('digits', tmp_path/'serial', **kw)
    capsys.readouterr()
    compare('digits', tmp_path/'ray', executor=RayExecutor(cpus_per_run=1), **kw)
    said = capsys.readouterr().out
    for run in ('instance_seed0', 'bmx-0.2_seed0'): assert f'{run}: test mcc ' in said, said  # each run's line, as it ends
    a, b = (pd.read_csv(tmp_path/d/'results.csv').sort_values('run').reset_index(drop=True) for d in ('serial', 'ray'))
    pd.testing.assert_frame_equal(a.drop(columns='train_s'), b.drop(columns='train_s'))
    for run in a.run:
        with np.load(tmp_path/'serial'/'preds'/f'{run}.npz') as x, np.load(tmp_path/'ray'/'preds'/f'{run}.npz') as y:
            fct.test_eq(set(x.files), set(y.files))
            for k in x.files: np.testing.assert_array_equal(x[k], y[k])
    assert not list((tmp_path/'ray'/'preds').glob('*.row.json')) and not list((tmp_path/'ray'/'preds').glob('*.tmp'))
    assert (tmp_path/'ray'/'results.md').exists() and not (tmp_path/'ray'/'failures.json').exists()
    assert not [p for p in (tmp_path/'ray').rglob('*') if 'ray' in p.name.lower() or 'session' in p.name]  # no Ray files or logs in the folder


def test_a_diverging_run_is_tried_once_and_recorded_as_diverged(tmp_path, capsys):
    out = tmp_path/'cmp'
    tbl = compare('digits', out, methods=['nancounted'], seeds=[0], executor='ray', **TINY)
    said = capsys.readouterr().out
    fct.test_eq(len(tbl), 0)
    fct.test_eq(len(tries(out, 'nancounted')), 1)  # came back as a record: Ray didn't retry it
    f = RunFolder(out).failures()['nancounted_seed0']
    fct.test_eq((f.status, f.epoch, f.error), ('diverged', 1, 'RunDiverged'))
    assert 'nancounted_seed0: diverged, the training loss reached nan in epoch 1' in said, said


def test_a_killed_worker_is_retried_and_its_run_recorded_once(tmp_path, capsys):
    out = tmp_path/'cmp'
    compare('digits', out, methods=['killedonce', 'instance'], seeds=[0], executor=RayExecutor(cpus_per_run=1, max_retries=2), **TINY)
    pids = tries(out, 'killedonce')
    assert len(pids) == 2 and pids[0] != pids[1], pids  # killed in the first try, trained in a second worker
    res = pd.read_csv(out/'results.csv')
    fct.test_eq(sorted(res.run), ['instance_seed0', 'killedonce_seed0'])  # once each
    fct.test_eq(capsys.readouterr().out.count('killedonce_seed0: test mcc'), 1)
    assert not (out/'failures.json').exists()


def test_with_no_retries_a_killed_run_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path, capsys):
    out = tmp_path/'cmp'
    compare('digits', out, methods=['killed', 'instance'], seeds=[0], executor=RayExecutor(cpus_per_run=1, max_retries=0), **TINY)
    said = capsys.readouterr().out
    fct.test_eq(len(tries(out, 'killed')), 1)
    fct.test_eq(list(pd.read_csv(out/'results.csv').run), ['instance_seed0'])
    f = RunFolder(out).failures()['killed_seed0']
    assert f.status == 'failed' and 'its worker died on each of 1 tries' in f.message, f
    assert 'killed_seed0: failed with ' in said and 'instance_seed0: test mcc' in said, said
    assert not (out/'models').exists() or not list((out/'models').glob('killed*'))  # the dead worker's checkpoint is gone


def test_logical_gpus_one_per_run_two_runs_at_a_time_each_training_on_the_cpu_here(tmp_path):
    out = tmp_path/'cmp'
    compare('digits', out, methods=['seesdevices'], seeds=[0, 1], executor=RayExecutor(gpus_per_run=1, cpus_per_run=1), **TINY)
    seen = sorted((out/'devices').read_text().split('\n')[:-1])
    fct.test_eq(seen, ['0 cpu', '1 cpu'])  # a GPU each, the two at once; no CUDA here, so each model trained on the CPU
    fct.test_eq(sorted(pd.read_csv(out/'results.csv').run), ['seesdevices_seed0', 'seesdevices_seed1'])


def test_a_command_killed_after_some_runs_resumes_with_every_run_recorded_once(tmp_path):
    exe, out = str(Path(sys.executable).parent/'bmx-compare'), tmp_path/'cmp'
    cmd = [exe, '--out', str(out), '--methods', 'instance', 'sqrt', 'cb', '--seeds', '0', '--epochs', '1', '--arch', 'resnet10t',
           '--bs', '32', '--quiet', '--executor', 'ray', '--cpus-per-run', '1']
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out/'results.csv').exists():  # killed once it has recorded a run, with others under way
        assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.1)
    os.kill(first.pid, signal.SIGKILL); first.wait()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # the same command
    assert r.returncode == 0, r.stderr[-3000:]
    res = pd.read_csv(out/'results.csv')
    fct.test_eq(sorted(res.run), ['cb_seed0', 'instance_seed0', 'sqrt_seed0'])  # every run, once
    assert 'already done' in r.stdout, r.stdout[-3000:]


def test_a_run_finished_but_not_recorded_is_recovered(tmp_path, monkeypatch, capsys):
    out = tmp_path/'cmp'  # the driver died after the worker wrote the run's files, before it appended the row
    plan = plan_compare('digits', out, methods=['instance'], seeds=[0], **TINY)
    with RunFolder(out).lock(): RunFolder(out).save_settings(plan.settings)
    got = train_spec(run_spec(plan, 'instance', 0, None, threads=1))  # the worker's part, in this process
    assert got.row is not None and (out/'preds'/'instance_seed0.row.json').exists() and not (out/'results.csv').exists()
    calls = []
    monkeypatch.setattr(executors, 'train_eval', lambda *a, **k: calls.append(a))
    compare('digits', out, methods=['instance'], seeds=[0], **TINY)  # the same command again
    fct.test_eq(calls, [])  # nothing trains again
    assert 'recovered 1 finished run(s)' in capsys.readouterr().out
    res = pd.read_csv(out/'results.csv')
    fct.test_eq(list(res.run), ['instance_seed0'])
    fct.test_close(res.mcc[0], got.row['mcc'])
    assert not (out/'preds'/'instance_seed0.row.json').exists()


@pytest.fixture
def no_ray_env(tmp_path):
    "The environment of a process in which `import ray` fails, as where it isn't installed"
    site = tmp_path/'site'; site.mkdir()
    (site/'sitecustomize.py').write_text("import sys; sys.modules['ray'] = None\n")
    return {**os.environ, 'PYTHONPATH': os.pathsep.join([str(site), os.environ.get('PYTHONPATH', '')])}


def test_without_ray_the_command_is_refused_in_one_line_naming_the_extra(tmp_path, no_ray_env):
    exe = str(Path(sys.executable).parent/'bmx-compare')
    r = subprocess.run([exe, '--out', str(tmp_path/'cmp'), '--executor', 'ray'], capture_output=True, text=True, timeout=300, env=no_ray_env)
    fct.test_eq(r.returncode, 2)
    fct.test_eq(len(r.stderr.strip().splitlines()), 1)
    assert 'pip install "fastai_bmx[ray]"' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path/'cmp').exists()


def test_without_ray_compare_refuses_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'ray', None)
    with pytest.raises(ImportError, match=r'pip install "fastai_bmx\[ray\]"'): compare('digits', tmp_path/'cmp', executor='ray', **TINY)
    assert not (tmp_path/'cmp').exists()


def test_cli_executor_ray_runs_and_resumes(tmp_path):
    exe, out = str(Path(sys.executable).parent/'bmx-compare'), tmp_path/'cmp'
    cmd = [exe, '--out', str(out), '--methods', 'instance', '--seeds', '0', '--epochs', '1', '--arch', 'resnet10t', '--bs', '32',
           '--quiet', '--executor', 'ray', '--cpus-per-run', '1', '--max-retries', '1']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # a local Ray of its own, started for the command
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'instance_seed0: test mcc ' in r.stdout and '| instance |' in r.stdout, r.stdout[-3000:]
    fct.test_eq(list(pd.read_csv(out/'results.csv').run), ['instance_seed0'])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and '1 runs already done, 0 to go' in r.stdout, r.stdout[-3000:]
    r = subprocess.run([exe, '--out', str(out), '--cpus-per-run', '1'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and '--cpus-per-run: only with --executor ray' in r.stderr, r.stderr
