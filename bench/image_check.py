"""How fast bmx-compare checks that every image file of a folder exists and decodes (`check_images`).

Writes N small PNG files (28x28 RGB, like MedMNIST) into an ImageNet-style folder, then times the check that
`bmx-compare` runs before its first epoch: listing the files (`folder_table`) and decoding every one of them
(`image_problems`, in one process per CPU core). One file is corrupt, so the check must find it. Then, the file
repaired, the check as planning runs it: the one decoding of every file, its pixels kept for the loaders that
serve them from memory (`check_images(..., in_memory=None)`, `decode_once`).

    python bench/image_check.py                  # 100,000 files
    python bench/image_check.py --n 10000 --workers 1 2 8
"""
import argparse, os, shutil, tempfile, time
from pathlib import Path
import numpy as np
from PIL import Image
from fastai_bmx.files import folder_table, image_problems
from fastai_bmx.app.plan.validate import check_images
from fastai_bmx.app.plan.sources import read_source

def make_folder(root:Path, n:int, classes:int=7) -> Path:
    g = np.random.default_rng(0)
    imgs = g.integers(0, 256, (256, 28, 28, 3), dtype=np.uint8)  # 256 distinct images, reused
    for split, frac in (('train', .7), ('valid', .1), ('test', .2)):
        for c in range(classes): (root/split/f'class{c}').mkdir(parents=True)
    for i in range(n):
        split = 'train' if i % 10 < 7 else 'valid' if i % 10 == 7 else 'test'
        Image.fromarray(imgs[i % 256]).save(root/split/f'class{i % classes}'/f'{i}.png')
    (root/'train'/'class0'/'0.png').write_bytes(b'corrupt')
    return root

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=100_000)
    p.add_argument('--workers', type=int, nargs='+', default=[None])
    a = p.parse_args()
    root = Path(tempfile.mkdtemp())
    try:
        t0 = time.perf_counter(); make_folder(root, a.n); print(f'wrote {a.n:,} PNG files in {time.perf_counter() - t0:.1f} s')
        t0 = time.perf_counter(); files = [root/f for f in folder_table(root)['fname']]; t_list = time.perf_counter() - t0
        print(f'listing: {t_list:.2f} s')
        for w in a.workers:
            t0 = time.perf_counter(); bad = image_problems(files, w); t = time.perf_counter() - t0
            assert [f.name for f in bad] == ['0.png'], bad
            print(f'decoding every file, workers={w or "default"}: {t:.2f} s ({a.n / t:,.0f} files/s)')
        t0 = time.perf_counter()
        try: check_images(read_source(str(root))); raise AssertionError('the corrupt file was not found')
        except ValueError as e: msg = str(e)
        print(f'check_images (list + decode + message), {os.cpu_count()} CPU cores: {time.perf_counter() - t0:.2f} s')
        print(msg[:160])
        Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(root/'train'/'class0'/'0.png')
        t0 = time.perf_counter(); kept = check_images(read_source(str(root)), size=28, in_memory=None); t = time.perf_counter() - t0
        assert kept, 'the images were not kept in memory'
        print(f'check_images as planning runs it (list + decode, pixels kept for the loaders): {t:.2f} s')
    finally: shutil.rmtree(root)
