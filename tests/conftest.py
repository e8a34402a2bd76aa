"Shared fixtures: where the real MedMNIST files live, and how a missing file is treated"
import os, tempfile
from pathlib import Path
import pytest

# No test touches the network: the Hugging Face hub (timm's weights) is offline, and converted weights go to a cache
# of this test session's own, so the conversion itself is tested
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ.setdefault('BMX_CACHE', tempfile.mkdtemp(prefix='bmx_cache_'))

# Under pytest-xdist (`pytest -n auto`) each worker takes an equal share of the cores for torch, so that the workers
# don't oversubscribe them; subprocesses a test starts choose their own threads (the CLI tests pass --threads 1)
_workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
if _workers > 1:
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))

def data_dir() -> Path:
    "`$BMX_DATA` when set, else `shared/data` beside the project checkout"
    env = os.environ.get('BMX_DATA')
    return Path(env) if env else Path(__file__).resolve().parents[1].parent/'shared'/'data'

@pytest.fixture
def real_data():
    "Path to a real data file; skips when absent, but fails when `BMX_REQUIRE_DATA` is set (CI sets it)"
    def _get(fname):
        p = data_dir()/fname
        if p.exists(): return p
        msg = f"real data file {fname} not found in {data_dir()}: set BMX_DATA to the folder holding the MedMNIST .npz files"
        if os.environ.get('BMX_REQUIRE_DATA'): pytest.fail(msg + " (BMX_REQUIRE_DATA is set, so this can't be skipped)")
        pytest.skip(msg)
    return _get
