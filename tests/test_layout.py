"The two layers: the library in fastai_bmx/, the bmx-compare application in fastai_bmx/app/, and the old import paths"
import ast, subprocess, sys
from pathlib import Path
import pytest
from fastai_bmx._moved import MOVED

PKG = Path(__file__).resolve().parents[1]/'fastai_bmx'
LIBRARY = sorted(p for p in PKG.glob('*.py') if p.name not in ('_modidx.py', 'all.py'))

def _imports(path):
    "The fastai_bmx modules a file imports, as absolute names"
    pkg = 'fastai_bmx' if path.parent == PKG else 'fastai_bmx.app'
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = pkg.rsplit('.', node.level - 1)[0] if node.level else ''
            yield f"{base}.{node.module}" if node.level and node.module else (node.module or base)
        elif isinstance(node, ast.Import): yield from (a.name for a in node.names)

def test_every_moved_module_is_in_app_and_none_left_at_the_top():
    assert set(MOVED) <= {p.stem for p in (PKG/'app').glob('*.py')}
    assert not [m for m in MOVED if (PKG/f'{m}.py').exists()]

@pytest.mark.parametrize('path', LIBRARY, ids=[p.stem for p in LIBRARY])
def test_library_imports_nothing_of_the_application(path):
    up = [m for m in _imports(path) if m.startswith('fastai_bmx.app')]
    assert not up, f"{path.name} is library, and imports the application: {up}"

def test_imports_are_read_right():
    "The check above can fail: it sees a relative import of the application"
    f = PKG/'app'/'store.py'
    assert 'fastai_bmx.app.plan.sources' in set(_imports(f)) and 'fastai_bmx.metrics' in set(_imports(f))

def test_old_paths_import_the_moved_modules_with_a_warning():
    code = ("import importlib, warnings\n"
            "warnings.simplefilter('always')\n"
            "from fastai_bmx._moved import MOVED\n"
            "for m in MOVED:\n"
            "    with warnings.catch_warnings(record=True) as w:\n"
            "        warnings.simplefilter('always')\n"
            "        old = importlib.import_module('fastai_bmx.' + m)\n"
            "    new = importlib.import_module('fastai_bmx.app.' + m)\n"
            "    assert old is new and new.__spec__.name == new.__name__ == 'fastai_bmx.app.' + m, m\n"
            "    assert [str(x.message) for x in w if x.category is DeprecationWarning and 'moved to fastai_bmx.app.' + m in str(x.message)], m\n"
            "from fastai_bmx.compare import bmx_compare, plan_compare\n"
            "from fastai_bmx.store import RunFolder\n"
            "assert RunFolder.__module__ == 'fastai_bmx.app.run.store'\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith('ok'), r.stderr[-2000:]

def test_a_name_that_never_existed_still_fails():
    with pytest.raises(ModuleNotFoundError): __import__('fastai_bmx.no_such_module')

def test_no_module_passes_300_lines():
    long = {p.relative_to(PKG).as_posix(): n for p in PKG.rglob('*.py') if p.name != '_modidx.py'
            and (n := len(p.read_text().splitlines())) >= 300}
    assert not long, f"modules of 300 lines or more: {long}"
