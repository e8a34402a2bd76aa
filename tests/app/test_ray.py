"`--executor ray`: the runs of a comparison as Ray tasks on one local cluster, the same results as the serial loop, failures and dead workers recorded"
import json, os, re, signal, subprocess, sys, threading, time, warnings
from dataclasses import replace
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import fastcore.test as fct
import failing_methods  # registers nancounted, killedonce and killed here; the workers' setup hook registers them there
import fastai_bmx.app.run.executors as executors
from fastai_bmx.app.compare import compare, plan_compare
from fastai_bmx.app.run.executors import RayExecutor, run_spec, train_spec
from fastai_bmx.app.run.store import RunFolder
from fastai_bmx.app.run.cluster import CantRun

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
    compare('digits', tmp_path/'ray', executor=RayExecutor(cpus_per_run=1, gpus_per_run=0), **kw)
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
    tbl = compare('digits', out, methods=['nancounted'], seeds=[0], executor=RayExecutor(gpus_per_run=0), **TINY)
    said = capsys.readouterr().out
    fct.test_eq(len(tbl), 0)
    fct.test_eq(len(tries(out, 'nancounted')), 1)  # came back as a record: Ray didn't retry it
    f = RunFolder(out).failures()['nancounted_seed0']
    fct.test_eq((f.status, f.epoch, f.error), ('diverged', 1, 'RunDiverged'))
    assert 'nancounted_seed0: diverged, the training loss reached nan in epoch 1' in said, said


def test_a_killed_worker_is_retried_and_its_run_recorded_once(tmp_path, capsys):
    out = tmp_path/'cmp'
    compare('digits', out, methods=['killedonce', 'instance'], seeds=[0], executor=RayExecutor(cpus_per_run=1, gpus_per_run=0, max_retries=2), **TINY)
    pids = tries(out, 'killedonce')
    assert len(pids) == 2 and pids[0] != pids[1], pids  # killed in the first try, trained in a second worker
    res = pd.read_csv(out/'results.csv')
    fct.test_eq(sorted(res.run), ['instance_seed0', 'killedonce_seed0'])  # once each
    fct.test_eq(capsys.readouterr().out.count('killedonce_seed0: test mcc'), 1)
    assert not (out/'failures.json').exists()


def test_with_no_retries_a_killed_run_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path, capsys):
    out = tmp_path/'cmp'
    compare('digits', out, methods=['killed', 'instance'], seeds=[0], executor=RayExecutor(cpus_per_run=1, gpus_per_run=0, max_retries=0), **TINY)
    said = capsys.readouterr().out
    fct.test_eq(len(tries(out, 'killed')), 1)
    fct.test_eq(list(pd.read_csv(out/'results.csv').run), ['instance_seed0'])
    f = RunFolder(out).failures()['killed_seed0']
    assert f.status == 'failed' and 'its worker died on each of 1 tries' in f.message, f
    assert 'killed_seed0: failed with ' in said and 'instance_seed0: test mcc' in said, said
    assert not (out/'models').exists() or not list((out/'models').glob('killed*'))  # the dead worker's checkpoint is gone


@pytest.mark.skipif(torch.cuda.is_available(), reason='a worker without CUDA: the logical GPUs of a machine that has none')
def test_a_gpu_run_where_torch_has_no_cuda_fails_saying_so_each_in_a_process_of_its_own(tmp_path):
    out = tmp_path/'cmp'  # two logical GPUs each, so one at a time: a shared worker process would serve both
    compare('digits', out, methods=['seesdevices'], seeds=[0, 1], executor=RayExecutor(gpus_per_run=2, cpus_per_run=1), **TINY)
    assert not (out/'devices').exists() and not (out/'results.csv').exists()  # neither trained on the CPU instead
    fails = RunFolder(out).failures()
    fct.test_eq(sorted(fails), ['seesdevices_seed0', 'seesdevices_seed1'])
    for f in fails.values(): assert f.status == 'failed' and 'a GPU was reserved for it, but torch' in f.message and 'sees no CUDA' in f.message, f
    pids = {f.message.split('(pid ')[1].split()[0] for f in fails.values()}
    fct.test_eq(len(pids), 2)  # max_calls=1: a process per GPU run


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


# ---- a sweep on a real cluster: never stuck, never silently wrong (issue 41)

def cli_ray(out, *args, env=None, timeout=120):
    "`bmx-compare` with --executor ray, a run of one tiny epoch, as a user types it: its completed process"
    exe = str(Path(sys.executable).parent/'bmx-compare')
    cmd = [exe, '--out', str(out), '--methods', 'instance', '--seeds', '0', '--epochs', '1', '--arch', 'resnet10t', '--bs', '32',
           '--quiet', '--executor', 'ray', *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def refused_in_one_line(r, *says):
    fct.test_eq(r.returncode, 2)
    assert len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    for s in says: assert s in r.stderr, r.stderr


def within(seconds, f):
    "`f()`'s result, or a failure if it hasn't returned in `seconds` (a run that waits forever is left in its thread)"
    got = {}
    def call():
        try: got['value'] = f()
        except BaseException as e: got['error'] = e
    t = threading.Thread(target=call, daemon=True); t.start(); t.join(seconds)
    assert not t.is_alive(), f"still waiting after {seconds} s"
    if 'error' in got: raise got['error']
    return got['value']


def test_a_run_no_node_can_hold_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path/'cmp'  # the cluster's one node has 2 CPUs and 2 GPUs
    for ask, says in ((dict(cpus_per_run=3, gpus_per_run=0), 'each run asks 3 CPUs and 0 GPUs, more than any node of Ray has (2 CPUs, 2 GPUs'),
                      (dict(gpus_per_run=3, cpus_per_run=1), 'each run asks 1 CPUs and 3 GPUs')):
        with pytest.raises(CantRun, match=re.escape(says)):
            within(60, lambda: compare('digits', out, methods=['instance'], seeds=[0], executor=RayExecutor(**ask), **TINY))
        assert not out.exists()


def test_a_gpu_where_ray_sees_none_is_refused_in_one_line_with_no_folder(tmp_path):
    r = cli_ray(tmp_path/'cmp', '--gpus-per-run', '1')  # a local Ray of its own, on this machine without GPUs
    refused_in_one_line(r, 'each run asks 1 CPUs and 1 GPUs', 'Ray sees no GPU there')
    assert not (tmp_path/'cmp').exists()


def test_a_cluster_that_isnt_there_is_refused_in_one_line_naming_its_address(tmp_path):
    t0 = time.time()
    r = cli_ray(tmp_path/'cmp', '--address', '127.0.0.1:1', timeout=60)
    refused_in_one_line(r, '--address 127.0.0.1:1: no Ray cluster answers there')
    assert time.time() - t0 < 30 and not (tmp_path/'cmp').exists()


def test_auto_never_borrows_the_ray_another_command_started(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != 'RAY_ADDRESS'}  # this module's local Ray runs; no `ray start` cluster
    env['RAY_TMPDIR'] = str(tmp_path/'raytmp')
    r = cli_ray(tmp_path/'cmp', '--address', 'auto', env=env, timeout=60)
    refused_in_one_line(r, '--address auto: no Ray cluster was started with `ray start`', 'never borrowed')
    assert not (tmp_path/'cmp').exists()


def test_each_run_keeps_to_its_cpus_said_in_the_opening_lines(tmp_path, capsys):
    from helpers import png_table
    (data := tmp_path/'imgs').mkdir()
    png_table(data).to_csv(data/'labels.csv', index=False)
    out = tmp_path/'cmp'
    compare(str(data/'labels.csv'), out, methods=['seesshare'], seeds=[0, 1], from_disk=True, executor=RayExecutor(cpus_per_run=1, gpus_per_run=0),
            epochs=1, arch='resnet10t', bs=4, show_bar=False)
    fct.test_eq((out/'share').read_text().split('\n')[:-1], ['1 1', '1 1'])  # 1 thread, 1 loader process: not one per core
    said = capsys.readouterr().out
    assert 'Ray: 1 node(s), 2 CPUs, 2 GPUs; each run takes 1 CPUs (1 torch threads, 1 processes' in said and '0 GPUs' in said and '2 at a time' in said, said
    compare(str(data/'labels.csv'), tmp_path/'mem', methods=['instance'], seeds=[0], executor=RayExecutor(cpus_per_run=1, gpus_per_run=0),
            epochs=1, arch='resnet10t', bs=4, show_bar=False)
    assert 'MB for its images' in capsys.readouterr().out  # decoded once into each run's memory: Ray is asked for it


def test_an_error_outside_the_run_is_recorded_as_itself_in_plain_text_not_as_retried(tmp_path, monkeypatch):
    (mods := tmp_path/'driver_only').mkdir()
    (mods/'only_here.py').write_text('class OnlyHere:\n    "A class the workers can\'t import"\n')
    monkeypatch.syspath_prepend(str(mods))
    from only_here import OnlyHere
    spec = executors.run_spec
    monkeypatch.setattr(executors, 'run_spec', lambda *a, **k: replace(spec(*a, **k), device=OnlyHere()))  # won't unpickle there
    out = tmp_path/'cmp'
    compare('digits', out, methods=['instance'], seeds=[0], executor=RayExecutor(cpus_per_run=1, gpus_per_run=0, max_retries=2), **TINY)
    f = RunFolder(out).failures()['instance_seed0']
    fct.test_eq((f.status, f.error), ('failed', 'ModuleNotFoundError'))
    assert "No module named 'only_here'" in f.message and "doesn't retry" in f.message, f.message
    assert 'died' not in f.message and '\x1b' not in f.message and 'ray::' not in f.message, f.message


def test_a_folder_the_workers_dont_share_gets_each_runs_predictions_from_its_result(tmp_path, monkeypatch, capsys):
    spec, elsewhere = executors.run_spec, tmp_path/'on_the_worker'
    monkeypatch.setattr(executors, 'run_spec', lambda *a, **k: replace(spec(*a, **k), path=str(elsewhere)))  # its own disk
    out = tmp_path/'cmp'
    compare('digits', out, methods=['instance'], seeds=[0], executor=RayExecutor(cpus_per_run=1, gpus_per_run=0), **TINY)
    assert (elsewhere/'preds'/'instance_seed0.npz').exists()  # what the worker wrote, where the command can't see it
    fct.test_eq(list(pd.read_csv(out/'results.csv').run), ['instance_seed0'])
    assert RunFolder(out).preds_readable('instance_seed0') and (out/'results.md').exists()
    assert "isn't shared with the workers" in capsys.readouterr().out


def test_precision_is_checked_where_the_run_trains_not_where_it_is_submitted(tmp_path):
    out = tmp_path/'cmp'  # a login node without a GPU submits fp16 runs: the workers' devices decide
    compare('digits', out, methods=['instance'], seeds=[0], precision='fp16', executor=RayExecutor(cpus_per_run=1, gpus_per_run=0), **TINY)
    if torch.cuda.is_available(): return
    f = RunFolder(out).failures()['instance_seed0']
    assert "precision 'fp16' needs a CUDA GPU" in f.message, f
