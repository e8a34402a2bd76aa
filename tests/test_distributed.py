"Balanced-MixUp under fastai's distributed data parallel training: 2 CPU processes with the gloo backend"
import json, os, subprocess, sys
from pathlib import Path
import numpy as np, pytest
from scipy import stats
import fastcore.test as fct

pytest.importorskip('accelerate', reason="fastai.distributed needs accelerate: pip install -e '.[dev]' installs it")
COUNTS = (200, 80, 24, 8)


@pytest.fixture(scope='module')
def ranks(tmp_path_factory):
    "Launch tests/dist_train.py on 2 processes with torchrun and read what each rank trained on"
    out = tmp_path_factory.mktemp('ddp')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'CUDA_VISIBLE_DEVICES': ''}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           str(Path(__file__).parent/'dist_train.py'), str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return [json.loads((out/f'rank{i}.json').read_text()) for i in range(2)]


def test_ranks_train_the_same_number_of_steps(ranks):
    fct.test_eq(len(ranks[0]['main']), len(ranks[1]['main']))
    fct.test_eq(len(ranks[0]['partner']), len(ranks[0]['main']))  # a partner batch for every main batch
    assert ranks[0]['steps_per_epoch'] > 1


def test_main_batches_are_sharded(ranks):
    "fastai's own sharding (through the patched broadcast): in an epoch the ranks see disjoint items"
    n = ranks[0]['steps_per_epoch']
    for e in range(2):
        a, b = ({i for batch in r['main'][e*n:(e+1)*n] for i in batch} for r in ranks)
        assert a and b and not a & b


def test_partner_items_differ_between_ranks(ranks):
    "Each rank mixes in its own slice of one class-balanced draw, not a copy of the other rank's partners"
    p0, p1 = (np.concatenate(r['partner']) for r in ranks)
    fct.test_eq(len(p0), len(p1))
    assert (p0 != p1).mean() > 0.5  # identical seeds: unsharded per-rank draws would make these equal


def test_partners_of_all_ranks_together_are_class_balanced(ranks):
    y = np.concatenate([np.concatenate(r['partner_y']) for r in ranks])
    labels = np.repeat(np.arange(len(COUNTS)), COUNTS)
    idx = np.concatenate([np.concatenate(r['partner']) for r in ranks])
    fct.test_eq(labels[idx], y)  # the recorded labels are those of the recorded items
    assert stats.chisquare(np.bincount(y, minlength=len(COUNTS))).pvalue > 1e-3
    main = labels[np.concatenate([np.concatenate(r['main']) for r in ranks])]
    assert stats.chisquare(np.bincount(main, minlength=len(COUNTS))).pvalue < 1e-12  # the control: instance sampling


def test_weights_stay_in_sync_and_loss_is_restored(ranks):
    np.testing.assert_allclose(ranks[0]['params'], ranks[1]['params'], rtol=0, atol=1e-6)
    for r in ranks: fct.test_eq(r['loss_func'], 'CrossEntropyLossFlat')
