"Everything in fastai_bmx, the way `fastai.vision.all` gathers fastai: `from fastai_bmx.all import *`"
from .sampling import *
from .mixup import *
from .losses import *
from .metrics import *
from .evaluation import *
from .data import *
