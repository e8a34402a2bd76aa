"Everything in fastai_bmx, the way `fastai.vision.all` gathers fastai: `from fastai_bmx.all import *`"
from .sampling import *
from .schedule import *
from .mixup import *
from .losses import *
from .adjust import *
from .retrain import *
from .metrics import *
from .evaluation import *
from .bootstrap import *
from .app.paired import *
from .data import *
from .files import *
from .splits import *
from .weights import *
from .app.training import *
from .precision import *
from .app.report import *
