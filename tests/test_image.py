"""Image loading (orientation, modes, limits, path confinement) and CLIP preprocessing parity."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from tolerances import rounding_tolerance

from mmllava.data.image import ImageProcessor, expand2square, load_image
from mmllava.errors import MMLLaVAError
from mmllava.tiny.synthetic import build_synthetic_data


def _save(img, path, **kwargs):
    img.save(path, **kwargs)
    return path


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new('RGB', (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(img, tmp_path / 'rot.png', exif=exif)
    loaded = load_image(path)
    assert loaded.size == (20, 40) and loaded.mode == 'RGB'
    assert loaded.getpixel((10, 2)) == (0, 0, 255)  # the blue edge is now on top


def test_modes_become_rgb_with_alpha_on_white(tmp_path):
    rgba = Image.new('RGBA', (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    loaded = load_image(_save(rgba, tmp_path / 'a.png'))
    assert loaded.getpixel((0, 0)) == (255, 0, 0) and loaded.getpixel((3, 3)) == (255, 255, 255)

    palette = Image.new('P', (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    loaded = load_image(_save(palette, tmp_path / 'p.png', transparency=0))
    assert loaded.getpixel((0, 0)) == (255, 255, 255) and loaded.getpixel((1, 1)) == (0, 200, 0)

    gray = Image.new('L', (4, 4), 77)
    assert load_image(_save(gray, tmp_path / 'g.png')).getpixel((2, 2)) == (77, 77, 77)
    la = Image.new('LA', (4, 4), (0, 0))
    assert load_image(_save(la, tmp_path / 'la.png')).getpixel((2, 2)) == (255, 255, 255)
    deep = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert load_image(_save(deep, tmp_path / 'i16.png')).getpixel((0, 0)) == (255, 255, 255)


def test_pixel_limit(tmp_path):
    path = _save(Image.new('RGB', (100, 80)), tmp_path / 'big.png')
    assert load_image(path, max_pixels=8000).size == (100, 80)
    with pytest.raises(MMLLaVAError, match=r'big\.png: image of 100x80 pixels exceeds max_pixels=7999'):
        load_image(path, max_pixels=7999)


def test_paths_are_confined_to_the_image_folder(tmp_path):
    folder = tmp_path / 'images'
    folder.mkdir()
    _save(Image.new('RGB', (4, 4)), folder / 'in.png')
    outside = _save(Image.new('RGB', (4, 4)), tmp_path / 'out.png')
    assert load_image('in.png', folder).size == (4, 4)
    assert load_image(folder / 'in.png', folder).size == (4, 4)  # absolute but inside
    assert load_image('sub/../in.png', folder).size == (4, 4)
    for bad in ('../out.png', str(outside), 'sub/../../out.png'):
        with pytest.raises(MMLLaVAError, match='leaves the image folder'):
            load_image(bad, folder)
    assert load_image('../out.png', folder, allow_absolute_paths=True).size == (4, 4)


def test_unreadable_files_name_the_file(tmp_path):
    corrupt = tmp_path / 'corrupt.png'
    corrupt.write_bytes(b'not an image at all')
    with pytest.raises(MMLLaVAError, match=r'corrupt\.png: cannot read image'):
        load_image(corrupt)
    whole = _save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)),
                  tmp_path / 'whole.png')
    truncated = tmp_path / 'truncated.png'
    truncated.write_bytes(whole.read_bytes()[:400])
    with pytest.raises(MMLLaVAError, match=r'truncated\.png: cannot read image'):
        load_image(truncated)
    with pytest.raises(MMLLaVAError, match=r'image file not found: .*missing\.png'):
        load_image('missing.png', tmp_path)


def test_expand2square_centres_on_background():
    img = Image.new('RGB', (6, 2), (255, 0, 0))
    square = expand2square(img, (1, 2, 3))
    assert square.size == (6, 6)
    assert square.getpixel((0, 0)) == (1, 2, 3) and square.getpixel((0, 2)) == (255, 0, 0)
    assert square.getpixel((0, 4)) == (1, 2, 3)
    assert expand2square(square, (0, 0, 0)) is square


def _reference_processor(**kwargs):
    """transformers' CLIP processor on the PIL backend (what 5.x gives without torchvision)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(**kwargs)


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    return build_synthetic_data(tmp_path_factory.mktemp('shapes'), num_train=4, num_eval=0)['image_folder']


@pytest.mark.parametrize('size, crop', [(64, 64), (80, 64), (336, 336)])
def test_processor_matches_transformers(shapes, size, crop):
    reference = _reference_processor(size={'shortest_edge': size}, crop_size={'height': crop, 'width': crop})
    ours = ImageProcessor(size=size, crop_size=crop, patch_size=8 if crop == 64 else 14)
    rng = np.random.default_rng(size)
    images = [load_image(p) for p in sorted(shapes.glob('*.png'))]
    images += [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((53, 97), (130, 41))]
    for img in images:
        expected = reference(img, return_tensors='pt')['pixel_values'][0]
        got = ours(img)
        assert got.dtype == torch.float32 and got.shape == (3, crop, crop)
        # the same PIL resize of the same uint8 image, then 3 fp32 element-wise roundings (rescale,
        # subtract, divide) in either order; a float-vs-uint8 resize would differ by ~1/255/std = 0.015
        torch.testing.assert_close(got, expected, rtol=0,
                                   atol=rounding_tolerance(torch.float32, 1, expected.abs().max(), sequential=3))


def test_from_pretrained_reads_processor_and_vision_config(tmp_path):
    settings = {'size': {'shortest_edge': 64}, 'crop_size': {'height': 64, 'width': 64}, 'resample': 3,
                'image_mean': [0.5, 0.5, 0.5], 'image_std': [0.25, 0.25, 0.25], 'do_center_crop': True}
    (tmp_path / 'config.json').write_text(json.dumps({'vision_config': {'patch_size': 8, 'image_size': 64}}))
    (tmp_path / 'processor_config.json').write_text(json.dumps({'image_processor': settings}))
    processor = ImageProcessor.from_pretrained(tmp_path)
    assert processor.num_image_tokens == 64 and processor.background_rgb == (127, 127, 127)
    img = Image.new('RGB', (70, 64), (127, 127, 127))
    assert processor(img).abs().max() < 0.01  # (127 / 255 - 0.5) / 0.25 = -0.008: uint8's step, not rounding
    (tmp_path / 'preprocessor_config.json').write_text(json.dumps({**settings, 'crop_size': 48, 'size': 48}))
    with pytest.raises(MMLLaVAError, match=r'crops to \(48, 48\) but the vision tower expects 64'):
        ImageProcessor.from_pretrained(tmp_path)


def test_from_pretrained_on_tiny_clip(tiny_zoo):
    from transformers import AutoImageProcessor

    folder = tiny_zoo['clip_vit']
    processor = ImageProcessor.from_pretrained(folder)
    assert processor.num_image_tokens == (64 // 8) ** 2
    reference = AutoImageProcessor.from_pretrained(folder)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 90, 3), dtype=np.uint8))
    expected = reference(img, return_tensors='pt')['pixel_values'][0]
    # as test_processor_matches_transformers: the same resize, 3 element-wise fp32 roundings
    torch.testing.assert_close(processor(img), expected, rtol=0,
                               atol=rounding_tolerance(torch.float32, 1, expected.abs().max(), sequential=3))
