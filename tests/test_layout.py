"The house: the library in fastai_bmx/, the bmx-compare application in fastai_bmx/app/, its phases as floors"
import ast
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parents[1]/'fastai_bmx'
MODULES = sorted(p for p in PKG.rglob('*.py') if p.name != '_modidx.py')
# the floors, lowest first: a module imports only from its own floor or lower ones
FLOORS = ['library', 'app.plan', 'app.run', 'app.decide', 'app.report', 'app.compare', 'app.cli', 'all']


def module_name(path:Path) -> str:
    "The dotted name of a module file of the package"
    parts = path.relative_to(PKG.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imports(path:Path):
    "The fastai_bmx modules a file imports, as absolute names, with those imported inside functions"
    name = module_name(path)
    pkg = name if path.name == '__init__.py' else name.rsplit('.', 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = pkg.rsplit('.', node.level - 1)[0] if node.level > 1 else pkg
            mod = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or '')
            if mod.startswith('fastai_bmx'): yield mod
        elif isinstance(node, ast.Import): yield from (a.name for a in node.names if a.name.startswith('fastai_bmx'))


def floor(name:str) -> int:
    "The floor of a module: the library is the ground, then the phases of the application, then the command line"
    rest = name[len('fastai_bmx.'):] if name.startswith('fastai_bmx.') else ''
    for i, f in reversed(list(enumerate(FLOORS))):
        if rest == f or rest.startswith(f + '.'): return i
    return 0


def test_imports_are_read_right():
    "The checks below can fail: a relative import of the application from a phase is seen as such"
    got = set(imports(PKG/'app'/'run'/'store.py'))
    assert {'fastai_bmx.app.plan.sources', 'fastai_bmx.app.run.table'} <= got, got
    assert floor('fastai_bmx.app.run.store') == FLOORS.index('app.run') and floor('fastai_bmx.sampling') == 0
    assert floor('fastai_bmx.app.cli') > floor('fastai_bmx.app.compare') > floor('fastai_bmx.app.report.results')


@pytest.mark.parametrize('path', MODULES, ids=[module_name(p) for p in MODULES])
def test_no_module_imports_a_higher_floor(path):
    me = floor(module_name(path))
    up = [m for m in imports(path) if floor(m) > me]
    assert not up, f"{module_name(path)} (floor {FLOORS[me]}) imports from a higher floor: {up}"


def test_the_library_imports_nothing_of_the_application():
    lib = [p for p in MODULES if p.parent == PKG and p.name != 'all.py']
    bad = {module_name(p): [m for m in imports(p) if m.startswith('fastai_bmx.app')] for p in lib}
    assert not {k: v for k, v in bad.items() if v}, bad


def test_no_circle_of_imports():
    graph = {module_name(p): {m for m in imports(p) if m != module_name(p)} for p in MODULES}
    seen, on_path, circles = set(), [], []
    def visit(n):
        if n in on_path: circles.append(on_path[on_path.index(n):] + [n]); return
        if n in seen or n not in graph: return
        seen.add(n); on_path.append(n)
        for m in sorted(graph[n]): visit(m)
        on_path.pop()
    for n in sorted(graph): visit(n)
    assert not circles, f"import circles: {circles}"


def test_no_private_name_is_imported_across_modules():
    bad = [(module_name(p), a.name) for p in MODULES for node in ast.walk(ast.parse(p.read_text()))
           if isinstance(node, ast.ImportFrom) and node.module != '__future__'
           for a in node.names if a.name.startswith('_')]
    assert not bad, f"private names imported from another module: {bad}"


def test_the_phases_are_folders():
    phases = {p.name for p in (PKG/'app').iterdir() if p.is_dir() and not p.name.startswith('_')}
    assert phases >= {'plan', 'run', 'decide', 'report'}, phases
    assert not [p.name for p in (PKG/'app').glob('*.py') if p.stem not in ('__init__', 'compare', 'cli')]


def test_a_name_that_never_existed_still_fails():
    with pytest.raises(ModuleNotFoundError): __import__('fastai_bmx.no_such_module')


def test_no_module_passes_300_lines():
    long = {p.relative_to(PKG).as_posix(): n for p in MODULES if (n := len(p.read_text().splitlines())) >= 300}
    assert not long, f"modules of 300 lines or more: {long}"


def test_no_line_passes_120_characters():
    "nbdev writes the `__all__` lines itself, so they are left out"
    long = [(module_name(p), i) for p in MODULES for i, line in enumerate(p.read_text().splitlines(), 1)
            if len(line) > 120 and not line.startswith('__all__')]
    assert not long, f"lines over 120 characters (module, line): {long}"


def test_no_exported_cell_passes_80_lines():
    import json
    nbs = Path(__file__).resolve().parents[1]/'nbs'
    big = [(p.relative_to(nbs).as_posix(), c.get('id')) for p in sorted(nbs.rglob('*.ipynb'))
           for c in json.loads(p.read_text())['cells']
           if c['cell_type'] == 'code' and ''.join(c['source']).startswith('#| export')
           and len(''.join(c['source']).splitlines()) > 80]
    assert not big, f"exported cells over 80 lines (notebook, cell id): {big}"
