__version__ = "0.0.1"

from ._moved import install as _install_moved
_install_moved()  # the old paths of the modules now in fastai_bmx.app (fastai_bmx.store, ...) still import
