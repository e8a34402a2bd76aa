"bmx-compare as a user calls it: bad input is refused before any training, in one line, with exit status 2; kill -9 loses one run"
import os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import fastcore.test as fct
from PIL import Image

EXE = str(Path(sys.executable).parent/'bmx-compare')
FAST = ['--epochs', '1', '--arch', 'resnet10t', '--bs', '8', '--seeds', '0', '--quiet', '--threads', '1']


def cli(*args, timeout=600):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def refused(r, *contains):
    "Exit status 2, and one line on stderr, without a traceback, that holds each of `contains`"
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr and lines[0].startswith('bmx-compare: '), lines[0]
    for c in contains: assert c in lines[0], (c, lines[0])
    return lines[0]


def image_folder(root, counts=(('train', (6, 3)), ('valid', (2, 2)), ('test', (2, 2)))):
    g = np.random.default_rng(0)
    for split, ns in counts:
        for cls, n in zip(('common', 'rare', 'rarest'), ns):
            (root/split/cls).mkdir(parents=True)
            for i in range(n): Image.fromarray(g.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root/split/cls/f'{i}.png')
    return root


def npz(path, test_labels=None, labels_shape=None):
    "A tiny MedMNIST-style file: 3 classes in train and valid; `test_labels` to make the test split odd"
    g = np.random.default_rng(0)
    a = {}
    for split, n in (('train', 30), ('val', 9), ('test', 9)):
        a[f'{split}_images'] = g.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        a[f'{split}_labels'] = (np.arange(n) % 3).astype(np.uint8).reshape(-1, 1)
    if test_labels is not None: a['test_labels'] = np.asarray(test_labels, np.uint8).reshape(-1, 1)
    if labels_shape is not None: a['train_labels'] = np.zeros(labels_shape, np.uint8)
    np.savez(path, **a)
    return path


# --- the cases of the issue ---------------------------------------------------------------------------------------

def test_a_csv_that_lists_a_missing_image(tmp_path):
    root = image_folder(tmp_path/'imgs')
    rows = [(str(f.relative_to(root)), f.parent.name, f.parent.parent.name) for f in sorted(root.rglob('*.png'))]
    rows.append(('train/rare/not_there.png', 'rare', 'train'))
    pd.DataFrame(rows, columns=['fname', 'label', 'split']).to_csv(root/'labels.csv', index=False)
    out = tmp_path/'out'
    refused(cli('--data', root/'labels.csv', '--out', out, *FAST), "1 of 18 image files can't be used", "not_there.png (missing)", "remove their rows from the CSV")
    assert not out.exists()


def test_a_folder_with_a_corrupt_image(tmp_path):
    root = image_folder(tmp_path/'imgs')
    (root/'train'/'rare'/'1.png').write_bytes(b'\x89PNG\r\n\x1a\n but then nothing')
    out = tmp_path/'out'
    refused(cli('--data', root, '--out', out, *FAST), "1 of 17 image files can't be used", '1.png', "doesn't decode")
    assert not out.exists()


def test_folds_with_too_few_images_of_a_class(tmp_path):
    root = image_folder(tmp_path/'imgs', counts=(('train', (8, 1)), ('valid', (2, 1)), ('test', (2, 1))))
    refused(cli('--data', root, '--out', tmp_path/'out', '--folds', 5, *FAST), '--folds 5 needs at least 5 images', 'rare has 2', 'use --folds 2 or fewer')
    assert not (tmp_path/'out').exists()


def test_a_test_class_that_training_never_sees(tmp_path):
    f = npz(tmp_path/'odd.npz', test_labels=[0, 1, 2, 3, 0, 1, 2, 3, 0])
    refused(cli('--data', f, '--out', tmp_path/'out', *FAST), 'The test split has images of class 3, which training never sees')
    assert not (tmp_path/'out').exists()


@pytest.mark.parametrize('args, contains', [
    (['--lr', 0], ['--lr 0', 'must be a number > 0']),
    (['--lr', 'nan'], ['--lr nan']),
    (['--bs', 0], ['--bs 0', 'integer >= 1']),
    (['--epochs', 0], ['--epochs 0', 'at least one epoch']),
    (['--size', 0], ['--size 0']),
    (['--seeds', -1], ['--seeds -1']),
    (['--seeds', 0, 0], ['a seed is repeated']),
    (['--threads', 0], ['--threads 0']),
    (['--folds', 1], ['--folds 1', 'k >= 2']),
    (['--monitor', 'accuracy'], ["monitor='accuracy'", 'use one of']),
    (['--methods', 'mixup'], ["Unknown method 'mixup'", 'choose from']),
    (['--methods', 'bmx', '--alphas', 0], ['alpha']),
    (['--arch', 'resnet_nope'], ["Unknown architecture 'resnet_nope'"]),
    (['--data', 'missing.npz'], ['No file missing.npz']),
    (['--data', 'notes.txt'], ["is not 'digits', a .npz file"]),
    (['--precision', 'half'], ["precision='half'", 'use one of fp32, bf16, fp16']),
    (['--frontier', '--frontier-x', 'accuracy'], ["frontier_x='accuracy'", 'balanced_accuracy, macro_f1']),
    pytest.param(['--precision', 'fp16'], ["precision 'fp16' needs a CUDA GPU", "use 'bf16'"],
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason='fp16 is refused only where there is no CUDA GPU')),
])
def test_bad_options_are_refused_in_one_line(tmp_path, args, contains):
    out = tmp_path/'out'
    refused(cli('--out', out, *_override(FAST, args)), *contains)
    assert not out.exists()


HEAVY = ('torch', 'torchvision', 'fastai')

def _loaded_heavy(script, *args):
    "A script that calls `script`'s installed entry point with `args`, as its console script does, then prints its exit status and which of `HEAVY` it imported"
    code = ("import sys\n"
            "from importlib.metadata import entry_points\n"
            f"entry = entry_points(group='console_scripts', name={script!r})[0].load()\n"
            f"sys.argv = {[script, *map(str, args)]!r}\n"
            "try: entry()\n"  # at the top level of a script file, as the console script calls it: call_parse reads sys.argv
            "except SystemExit as e: status = e.code\n"
            f"print(status, sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n")
    return code


@pytest.mark.parametrize('script, args, status', [
    ('bmx-compare', ['--help'], 0), ('bmx-report', ['--help'], 0),
    ('bmx-compare', ['--epochs', 0], 2), ('bmx-compare', ['--methods', 'nosuch'], 2), ('bmx-compare', ['--seeds', -1], 2),
    ('bmx-compare', ['--threads', 0], 2), ('bmx-compare', ['--precision', 'half'], 2), ('bmx-compare', ['--methods', 'bmx', '--alphas', 0], 2),
])
def test_help_and_a_wrong_option_load_no_torch(tmp_path, script, args, status):
    "--help, and the refusal of an option wrong on its face, answer before torch, torchvision or fastai load (a structural check, not a timing)"
    f = tmp_path/'run.py'
    f.write_text(_loaded_heavy(script, *args))
    r = subprocess.run([sys.executable, str(f)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    fct.test_eq(r.stderr.strip().splitlines()[-1], f'{status} []')
    assert not (tmp_path/'bmx_compare').exists()


def test_the_light_checks_refuse_as_plan_compare_does(tmp_path):
    "`check_command` (no torch) raises the very error `plan_compare` raises first"
    from fastai_bmx.app.compare import plan_compare, compare
    from fastai_bmx.app.plan.validate import check_command
    from fastai_bmx.app.cli import bmx_compare as cli_bmx_compare
    from fastai_bmx.app.report.frontier import FRONTIER_GRIDS
    from fastai_bmx.app.plan.methods import FRONTIER_GRIDS as grids
    from fastai_bmx.app.cli import bmx_report
    assert FRONTIER_GRIDS is grids
    assert callable(cli_bmx_compare) and callable(compare) and callable(bmx_report)
    (tmp_path/'file').write_text('')
    for kw in [dict(epochs=0), dict(lr=0), dict(seeds=[0, 0]), dict(methods=['nosuch']), dict(methods=['bmx-0.2+la', 'nosuch-1']),
               dict(methods=['bmx'], alphas=[0]), dict(methods=['la'], taus=[-1]), dict(methods=['sample'], qs=[2]),
               dict(precision='half'), dict(frontier_x='accuracy'), dict(out=tmp_path/'file'), dict(epochs=0, methods=['nosuch'])]:
        kw = {'out': tmp_path/'out', **kw}
        with pytest.raises(Exception) as light: check_command(**kw)
        with pytest.raises(Exception) as heavy: plan_compare('digits', **kw)
        fct.test_eq((type(light.value), str(light.value)), (type(heavy.value), str(heavy.value)))
    check_command(out=tmp_path/'out', methods=['bmx', 'la'], arch='resnet_nope', precision='fp16')  # left to plan_compare
    assert not (tmp_path/'out').exists()


def _override(base, args):
    "`base` CLI arguments with the options in `args` replacing theirs"
    flags = {str(a) for a in args if str(a).startswith('--')}
    out, skip = [], False
    for a in base:
        if skip and not str(a).startswith('--'): continue
        skip = str(a) in flags
        if not skip: out.append(a)
    return out + list(args)


def test_malformed_and_multi_label_npz(tmp_path):
    bad = tmp_path/'bad.npz'
    bad.write_bytes(b'this is no zip archive')
    refused(cli('--data', bad, '--out', tmp_path/'out', *FAST), 'is not a readable .npz')
    multi = npz(tmp_path/'multi.npz', labels_shape=(30, 3))
    refused(cli('--data', multi, '--out', tmp_path/'out', *FAST), 'multi-label')
    assert not (tmp_path/'out').exists()


@pytest.mark.parametrize('case, contains', [
    ('no_test_split', ['has no test split', 'add a test/ folder']),
    ('empty_csv', ["can't be read as a CSV table"]),
    ('csv_without_paths', ["no 'fname' column"]),
    ('class_only_in_valid', ['The valid split has images of class rarest, which training never sees']),
])
def test_bad_image_sources(tmp_path, case, contains):
    if case == 'no_test_split': data = image_folder(tmp_path/'imgs', counts=(('train', (6, 3)), ('valid', (2, 2))))
    elif case == 'class_only_in_valid': data = image_folder(tmp_path/'imgs', counts=(('train', (6, 3, 0)), ('valid', (2, 2, 2)), ('test', (2, 2, 0))))
    else:
        data = tmp_path/'labels.csv'
        data.write_text('' if case == 'empty_csv' else 'path,label\na.png,x\nb.png,y\n')
    refused(cli('--data', data, '--out', tmp_path/'out', *FAST), *contains)
    assert not (tmp_path/'out').exists()


def test_other_settings_leave_the_folder_as_it_was(tmp_path):
    out = tmp_path/'out'
    r = cli('--out', out, '--methods', 'instance', *FAST)
    assert r.returncode == 0, r.stderr[-2000:]
    before = {p: p.read_bytes() for p in out.rglob('*') if p.is_file()}
    refused(cli('--out', out, '--methods', 'instance', *_override(FAST, ['--epochs', 2])), 'other settings (epochs: 1 there, 2 now)', 'another --out folder')
    fct.test_eq({p: p.read_bytes() for p in out.rglob('*') if p.is_file()}, before)


def test_out_that_is_a_file(tmp_path):
    (tmp_path/'taken').write_text('mine')
    refused(cli('--out', tmp_path/'taken', *FAST), 'is a file')
    fct.test_eq((tmp_path/'taken').read_text(), 'mine')


def test_debug_shows_the_traceback(tmp_path):
    r = cli('--out', tmp_path/'out', '--debug', *_override(FAST, ['--lr', 0]))
    assert r.returncode != 0 and 'Traceback' in r.stderr and '--lr 0' in r.stderr


# --- crash safety -------------------------------------------------------------------------------------------------

def test_sigkill_mid_run_loses_only_that_run(tmp_path):
    "kill -9 during the second run: the first stays recorded, results.csv stays readable, and the next call resumes"
    out = tmp_path/'out'
    args = ['--out', out, '--methods', 'instance', 'focal', *_override(FAST, ['--epochs', 6, '--bs', 32])]
    p = subprocess.Popen([EXE, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not (out/'results.csv').exists() and time.time() < deadline and p.poll() is None: time.sleep(0.1)
    assert (out/'results.csv').exists(), p.communicate()[1][-2000:]
    time.sleep(3)  # well inside the second run's 6 epochs
    assert p.poll() is None, 'the comparison finished before it could be killed'
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    fct.test_eq(list(pd.read_csv(out/'results.csv').run), ['instance_seed0'])
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert '1 runs already done, 1 to go' in r.stdout
    res = pd.read_csv(out/'results.csv')
    fct.test_eq(list(res.run), ['instance_seed0', 'focal_seed0'])
    assert res[['mcc', 'accuracy']].notna().all().all()
