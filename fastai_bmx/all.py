"""Everything in the fastai_bmx library, the way `fastai.vision.all` gathers fastai: `from fastai_bmx.all import *`

The `bmx-compare` application lives in `fastai_bmx.app`."""
from .sampling import *
from .item_cache import *
from .schedule import *
from .mixup import *
from .losses import *
from .multilabel_losses import *
from .adjust import *
from .retrain import *
from .metrics import *
from .multilabel_metrics import *
from .evaluation import *
from .bootstrap import *
from .multilabel_bootstrap import *
from .data import *
from .medmnist import *
from .files import *
from .findings import *
from .splits import *
from .weights import *
from .precision import *
