"Pixels never silently wrong: NaN refused, a set's 12 bits in 16-bit files, Pillow's mode I, odd DICOM, bytes, arrays"
import re
from pathlib import Path
import numpy as np, pytest
import fastcore.test as fct
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from PIL import Image, PngImagePlugin
from fastai_bmx.images import read_pixels, read_dicom, window_uint8, range_uint8, bits_uint8
from fastai_bmx.images import decode_files, image_problems
from fastai_bmx.files import MedicalImage, ImageReader, square_resize


def _hu(ds) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


# --- 9. NaN or inf: refused, naming the file -------------------------------------------------------------------------

@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_a_float_tiff_with_nan_or_inf_is_refused_naming_it(tmp_path, bad):
    "One NaN turned the whole image black, with no error: now the file is refused, by name, and the set names it too"
    px = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    px[3, 3] = bad
    Image.fromarray(px).save(tmp_path/'scan.tif')
    with pytest.raises(ValueError, match=r'scan\.tif: 1 of 64 pixels are NaN or infinite'):
        read_pixels(tmp_path/'scan.tif')
    problems = image_problems([tmp_path/'scan.tif'])
    assert 'NaN or infinite' in problems[tmp_path/'scan.tif'], problems
    px[3, 3] = 0.5  # finite: read by its range, as before
    Image.fromarray(px).save(tmp_path/'ok.tif')
    fct.test_eq(read_pixels(tmp_path/'ok.tif'), range_uint8(px))


def test_a_float_dicom_with_nan_is_refused_naming_it(tmp_path):
    "Float pixel data (a parametric map's) with one NaN: refused by name, where it came out black"
    ds = pydicom.dcmread(get_testdata_file('CT_small.dcm'))
    px = _hu(ds).astype(np.float32)
    px[0, 0] = np.nan
    del ds.PixelData
    for k in ('BitsStored', 'HighBit', 'PixelRepresentation', 'RescaleSlope', 'RescaleIntercept'): del ds[k]
    ds.BitsAllocated, ds.FloatPixelData = 32, px.tobytes()
    ds.save_as(tmp_path/'map.dcm')
    with pytest.raises(ValueError, match=r'map\.dcm: 1 of 16,384 pixels are NaN or infinite'):
        read_dicom(tmp_path/'map.dcm')


# --- 10. 12 bits in a 16-bit file: scaled by the set's bit depth ------------------------------------------------------

def _xrays(root:Path, top:int=4095, n:int=4, sbit:bool=False) -> list:
    "16-bit PNGs of `n` images whose values reach `top` (a 12-bit detector's exports, without an sBIT chunk)"
    g, paths = np.random.default_rng(0), []
    for i in range(n):
        px = g.integers(0, top + 1, (24, 24)).astype(np.uint16)
        px[0, 0] = top if i == 0 else 0
        Image.fromarray(px).save(p := root/f'{i}.png')
        paths.append(p)
    return paths


def test_12bit_values_in_16bit_pngs_are_scaled_by_the_sets_12_bits(tmp_path):
    "17 grey levels of 256 before; now the set's largest value (4095) gives its depth, and every image is scaled by it"
    from fastai_bmx.bit_depth import bits_window
    paths = _xrays(tmp_path)
    images, problems, window = decode_files(paths, 24, workers=1)
    fct.test_eq((problems, window), ({}, bits_window(12)))
    want = np.stack([square_resize(Image.fromarray(bits_uint8(np.asarray(Image.open(p)), 12)), 24) for p in paths])
    fct.test_eq(images, want)
    assert len(np.unique(images)) > 200, len(np.unique(images))  # scaled by 16 bits: 17
    fct.test_eq(decode_files(paths, workers=1)[2], bits_window(12))  # checked only: the same depth, nothing kept
    one = read_pixels(paths[1])  # a file alone declares nothing: 16 bits, unless told the set's depth
    fct.test_eq((one, read_pixels(paths[1], window=window)), (bits_uint8(np.asarray(Image.open(paths[1])), 16),
                                                             bits_uint8(np.asarray(Image.open(paths[1])), 12)))


def test_the_depth_is_the_sets_not_each_images(tmp_path):
    "An image whose own maximum is low is not brightened: the depth is rounded up from the largest value of all"
    paths = _xrays(tmp_path, top=5000)  # 13 bits: rounded up to 14
    from fastai_bmx.bit_depth import bits_window
    images, _, window = decode_files(paths, 24, workers=1)
    fct.test_eq(window, bits_window(14))
    dim = np.full((24, 24), 1000, np.uint16)
    Image.fromarray(dim).save(tmp_path/'dim.png')
    images, _, _ = decode_files([*paths, tmp_path/'dim.png'], 24, workers=1)
    fct.test_eq(images[-1], bits_uint8(dim, 14))  # 16, not the 255 its own range would give


def test_full_16bit_mixed_or_declared_sets_keep_their_rule(tmp_path):
    "A set that reaches 16 bits, one with 8-bit images among its 16-bit ones, or a window asked for: no depth inferred"
    (tmp_path/'a').mkdir(); (tmp_path/'b').mkdir()
    full = _xrays(tmp_path/'a', top=65535, n=2)
    fct.test_eq(decode_files(full, 8, workers=1)[2], None)
    twelve = _xrays(tmp_path/'b', n=2)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path/'b'/'eight.png')
    fct.test_eq(decode_files([*twelve, tmp_path/'b'/'eight.png'], 8, workers=1)[2], None)
    fct.test_eq(decode_files(twelve, 8, 'range', workers=1)[2], 'range')


def test_bmx_compare_says_the_depth_and_every_reader_uses_it(tmp_path):
    "The plan's opening lines say the depth; the loaders (memory or files) and an exported reader see the same pixels"
    from fastai_bmx.app.compare import plan_compare
    g = np.random.default_rng(0)
    for split, n in (('train', 6), ('valid', 2), ('test', 2)):
        for cls, level in (('dim', 1000), ('bright', 3000)):
            (tmp_path/'data'/split/cls).mkdir(parents=True)
            for i in range(n):
                px = np.clip(level + g.normal(0, 300, (16, 16)), 0, 4095).astype(np.uint16)
                Image.fromarray(px).save(tmp_path/'data'/split/cls/f'{i}.png')
    plan = plan_compare(str(tmp_path/'data'), tmp_path/'out', methods=['instance'], seeds=[0], epochs=1,
                        arch='resnet10t', bs=4, size=16, show_bar=False)
    assert ('16-bit images holding 12-bit values (none above 4,095, no sBIT chunk): scaled by 12 bits, '
            'as --window 2047.5 4095') in plan.loading, plan.loading
    fct.test_eq((plan.settings['window'], plan.load.source.window), ([2047.5, 4095.], (2047.5, 4095.)))
    f = next((tmp_path/'data'/'test'/'bright').glob('*.png'))
    px = np.asarray(ImageReader(plan.load.source.window, 16)(f))  # as an exported model reads a file
    fct.test_eq(px[..., 0], np.asarray(square_resize(Image.fromarray(bits_uint8(np.asarray(Image.open(f)), 12)), 16)))
    assert 150 < px.mean() < 230, px.mean()  # 3000 of 4095: bright, where 16 bits gave about 12 of 255
    dls, _ = plan.load.load(0)  # served from memory: the same depth
    assert dls.train.dataset.tls[0].fs[0].images.max() > 200


# --- 11. Pillow before 10.3: a 16-bit PNG in mode I -------------------------------------------------------------------

def test_a_16bit_png_in_pillows_old_mode_i_is_read_by_its_bit_depth(tmp_path, monkeypatch):
    "Pillow < 10.3 opened 16-bit grey PNGs in mode I, stretched per image: the classes of a grey level vanished"
    for v in (20000, 40000): Image.fromarray(np.full((4, 4), v, np.uint16)).save(tmp_path/f'{v}.png')
    monkeypatch.setitem(PngImagePlugin._MODES, (16, 0), ('I', 'I;16B'))  # Pillow 10.2's table
    assert Image.open(tmp_path/'20000.png').mode == 'I'
    fct.test_eq([read_pixels(tmp_path/f'{v}.png')[0, 0] for v in (20000, 40000)], [78, 156])  # as in mode I;16


def test_pillow_is_pinned_where_16bit_reading_needs_it():
    "Pillow 10.3 opens 16-bit grey PNGs in mode I;16 (and older ones are read right anyway, above)"
    text = (Path(__file__).resolve().parents[1]/'pyproject.toml').read_text()
    deps = re.search(r'^dependencies = \[(.*)\]$', text, re.M).group(1)  # tomllib is Python 3.11's: 3.10 is supported
    assert '"pillow>=10.3"' in deps, deps


# --- 12. DICOM that is valid: empty window tags, a VOI LUT in OW ------------------------------------------------------

def test_empty_window_tags_are_read_as_absent(tmp_path):
    "WindowCenter and WindowWidth present but empty (type 2 in some modules) gave \"doesn't decode: TypeError\""
    ds = pydicom.dcmread(get_testdata_file('CT_small.dcm'))
    ds.WindowCenter, ds.WindowWidth = '', ''
    ds.save_as(tmp_path/'empty.dcm')
    fct.test_eq(read_dicom(tmp_path/'empty.dcm'), range_uint8(_hu(ds)))  # no window: its own range
    fct.test_eq(image_problems([tmp_path/'empty.dcm']), {})


@pytest.mark.parametrize('vr', ['OW', 'US'])
def test_a_voi_lut_is_read_in_any_vr(tmp_path, vr):
    "A VOI LUT whose LUT Data is OW bytes (as the standard allows) was refused; it reads as the same table in US"
    ds = pydicom.dcmread(get_testdata_file('CT_small.dcm'))
    assert 'WindowCenter' not in ds  # its own window: the table's
    lut = np.clip(np.arange(4096) - 1000, 0, 2000).astype(np.uint16)  # a table over the HU values + 1024 of the file
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    if vr == 'OW': item.add_new('LUTData', 'OW', lut.astype('<u2').tobytes())
    else: item.add_new('LUTData', 'US', lut.tolist())
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(tmp_path/'voi.dcm', implicit_vr=False, little_endian=True)
    fct.test_eq(pydicom.dcmread(tmp_path/'voi.dcm').VOILUTSequence[0]['LUTData'].VR, vr)
    hu = np.clip(_hu(ds).astype(int), 0, 4095)  # the modality values index the table
    fct.test_eq(read_dicom(tmp_path/'voi.dcm'), window_uint8(lut[hu], 1000, 2000))


# --- 13. learn.predict on bytes or an array reads as from the path ----------------------------------------------------

def test_bytes_and_arrays_read_as_their_file(tmp_path):
    "A 16-bit PNG's bytes and its uint16 array came out white through `MedicalImage`; now as the path, DICOM bytes too"
    v = np.random.default_rng(0).integers(0, 65536, (12, 12)).astype(np.uint16)
    Image.fromarray(v).save(tmp_path/'x.png')
    by_path = np.asarray(MedicalImage.create(tmp_path/'x.png'))
    fct.test_eq(by_path[..., 0], bits_uint8(v, 16))
    fct.test_eq(np.asarray(MedicalImage.create((tmp_path/'x.png').read_bytes())), by_path)
    fct.test_eq(np.asarray(MedicalImage.create(v)), by_path)
    ct = get_testdata_file('CT_small.dcm')
    reader = ImageReader((40, 400), 16)  # as an exported model reads: window and size
    fct.test_eq(np.asarray(reader(Path(ct).read_bytes())), np.asarray(reader(ct)))
    fct.test_eq(np.asarray(MedicalImage.create(np.zeros((2, 2, 3), np.uint8))).shape, (2, 2, 3))  # RGB as before


def test_learn_predict_takes_bytes_and_arrays_as_the_path(tmp_path):
    "`learn.predict` of an exported reader's learner: the bytes and the array give the path's probabilities"
    import torch
    from fastai.data.block import DataBlock, CategoryBlock
    from fastai.data.transforms import ColReader
    from fastai.vision.data import ImageBlock
    from fastai.vision.learner import vision_learner
    import pandas as pd
    g = np.random.default_rng(0)
    for i in range(8): Image.fromarray(g.integers(0, 65536, (16, 16)).astype(np.uint16)).save(tmp_path/f'{i}.png')
    df = pd.DataFrame({'f': [str(tmp_path/f'{i}.png') for i in range(8)], 'y': list('ab' * 4)})
    block = DataBlock((ImageBlock(ImageReader(None, 16)), CategoryBlock), get_x=ColReader('f'), get_y=ColReader('y'))
    dls = block.dataloaders(df, bs=4, num_workers=0)
    learn = vision_learner(dls, 'resnet10t', pretrained=False, n_out=2)
    f = tmp_path/'3.png'
    want = learn.predict(f)[2]
    for item in (f.read_bytes(), np.asarray(Image.open(f))):
        torch.testing.assert_close(learn.predict(item)[2], want)
