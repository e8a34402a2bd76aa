"""Moved: the old import paths of the modules that went into `fastai_bmx.app`, so that user code and exported models keep loading

Written by hand, not exported from a notebook: `fastai_bmx/__init__.py` installs it. `import fastai_bmx.store` (or an
exported `recommended.pkl` that names `fastai_bmx.export`) gets the module `fastai_bmx.app.store` itself, the same
object, with a `DeprecationWarning` that names the new path."""
import importlib, importlib.abc, importlib.util, sys, warnings

MOVED = ('sources', 'methods', 'guard', 'training', 'store', 'paired', 'posthoc', 'recommend', 'posthoc_report',
         'report', 'frontier', 'validate', 'export', 'compare')  # modules of fastai_bmx that now live in fastai_bmx.app

class _MovedLoader(importlib.abc.Loader):
    "Loads an old name as the moved module itself, keeping the real module's spec"
    def __init__(self, new:str): self.new = new # the module's path now
    def create_module(self, spec):
        module = importlib.import_module(self.new)
        self.real_spec = module.__spec__
        return module
    def exec_module(self, module): module.__spec__ = self.real_spec  # the import system had set the alias's spec on it

class MovedFinder(importlib.abc.MetaPathFinder):
    "Finds `fastai_bmx.<old>` for each module in `MOVED`, as `fastai_bmx.app.<old>`"
    def find_spec(self, fullname, path=None, target=None):
        pkg, _, name = fullname.rpartition('.')
        if pkg != 'fastai_bmx' or name not in MOVED: return None
        new = f'fastai_bmx.app.{name}'
        warnings.warn(f"{fullname} moved to {new}: import it from there", DeprecationWarning, stacklevel=2)
        return importlib.util.spec_from_loader(fullname, _MovedLoader(new))

def install():
    "Put `MovedFinder` on `sys.meta_path`, once"
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path): sys.meta_path.append(MovedFinder())
