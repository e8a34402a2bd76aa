"Helpers shared by the tests: a toy learner on 2x3x4 'images', and fake predictions with a one-item class"
import numpy as np, torch
from fastai.learner import Learner
from fastai.data.core import DataLoaders
from fastai.losses import CrossEntropyLossFlat


def toy_learner(model, n=20, seed=0, bs=6, loss_func=None):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 2, 3, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    ds = list(zip(x, y))
    dls = DataLoaders.from_dsets(ds, ds, bs=bs, device='cpu')
    return Learner(dls, model, loss_func=loss_func or CrossEntropyLossFlat()), x, y



def fake_preds(n=300, k=4, acc=0.6, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.choice(k, n, p=np.linspace(2, 1, k) / np.linspace(2, 1, k).sum())
    t[0] = k  # a class with one item
    hit = np.where(rng.random(n) < acc, t, rng.integers(0, k + 1, n))
    logits = rng.normal(size=(n, k + 1)) + 2.5 * np.eye(k + 1)[hit]
    return torch.softmax(torch.tensor(logits), 1).numpy(), t



def png_table(root, splits=(('train', 12), ('valid', 6), ('test', 6)), labels=('a', 'b', 'b')):
    "Random 20×20 RGB PNGs written to `root`, `n` per split, labelled in turn from `labels`: their table (fname, label, split)"
    import numpy as np, pandas as pd
    from PIL import Image
    g, rows = np.random.default_rng(0), []
    for split, n in splits:
        for i in range(n):
            f = f'{split}_{i}.png'
            Image.fromarray(g.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root/f)
            rows.append((f, labels[i % len(labels)], split))
    return pd.DataFrame(rows, columns=['fname', 'label', 'split'])
