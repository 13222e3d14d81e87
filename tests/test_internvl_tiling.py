"""InternVL2 dynamic tiling and pixel shuffle against references written here from the rules in
shared/FORMATS.md (and InternVL's published ``dynamic_preprocess`` / ``pixel_shuffle``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmllava.data.internvl_image import IMAGENET_MEAN, IMAGENET_STD, InternVLImageProcessor
from mmllava.models.internvl import pixel_shuffle


def reference_grid(width, height, min_num=1, max_num=12, image_size=448):
    """FORMATS.md: candidate grids (i, j) with min_num <= i*j <= max_num sorted by area; the smallest
    |aspect - i/j| wins; on a tie the later grid wins only if W*H > 0.5 * image_size^2 * i * j."""
    candidates = sorted({(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1)
                         for j in range(1, n + 1) if min_num <= i * j <= max_num}, key=lambda g: g[0] * g[1])
    best, best_diff = (1, 1), float('inf')
    for i, j in candidates:
        diff = abs(width / height - i / j)
        if diff < best_diff:
            best, best_diff = (i, j), diff
        elif diff == best_diff and width * height > 0.5 * image_size ** 2 * i * j:
            best = (i, j)
    return best


# (width, height, max_num) -> grid, tiles with thumbnail, tokens at 256 per tile (InternVL2 at 448 px)
TABLE = [
    (448, 448, 12, (1, 1), 1, 256),      # square, small: (2, 2) ties but the image is too small for it
    (800, 800, 12, (2, 2), 5, 1280),     # tie -> (2, 2) (640000 > 401408), not (3, 3) (< 903168)
    (1000, 1000, 12, (3, 3), 10, 2560),  # tie -> (3, 3); (4, 4) has 16 tiles > 12
    (896, 448, 12, (2, 1), 3, 768),      # exact 2:1; (4, 2) ties but 401408 < 802816
    (1344, 448, 12, (3, 1), 4, 1024),
    (300, 1000, 12, (1, 3), 4, 1024),    # portrait 0.3 -> closest 1:3
    (672, 448, 12, (3, 2), 7, 1792),     # 1.5 exactly = 3:2
    (560, 448, 6, (1, 1), 1, 256),       # 1.25: 1:1, 2:2 and 3:2 tie; too small for the larger grids
    (1400, 1120, 6, (3, 2), 7, 1792),    # 1.25 again, large: the tie moves to (2, 2) then (3, 2)
    (4000, 100, 6, (6, 1), 7, 1792),     # extreme panorama, capped at max_num
]


@pytest.mark.parametrize('width, height, max_num, grid, tiles, tokens', TABLE)
def test_grid_table(width, height, max_num, grid, tiles, tokens):
    processor = InternVLImageProcessor(image_size=448, max_num=max_num)
    assert reference_grid(width, height, max_num=max_num) == grid
    assert processor.grid(width, height) == grid
    assert processor.num_tiles(width, height) == tiles
    assert processor.num_tiles(width, height) * processor.tokens_per_tile == tokens


def test_grid_matches_reference_on_many_sizes():
    rng = np.random.default_rng(0)
    sizes = [(int(w), int(h)) for w, h in rng.integers(16, 3000, size=(400, 2))]
    sizes += [(448 * a, 448 * b) for a in range(1, 7) for b in range(1, 7)]  # exact ratios: every tie path
    for min_num, max_num in ((1, 12), (1, 6), (2, 6), (1, 1)):
        processor = InternVLImageProcessor(image_size=448, min_num=min_num, max_num=max_num)
        for w, h in sizes:
            assert processor.grid(w, h) == reference_grid(w, h, min_num, max_num), (w, h, min_num, max_num)


def test_tiles_are_row_major_crops_plus_thumbnail_normalised_with_imagenet_stats():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, size=(70, 150, 3), dtype=np.uint8))  # 150 x 70 -> 2 x 1
    processor = InternVLImageProcessor(image_size=56, max_num=6, tokens_per_tile=16)
    assert processor.grid(150, 70) == (2, 1)
    pixels = processor(image)
    assert pixels.shape == (3, 3, 56, 56) and pixels.dtype == torch.float32

    resized = np.asarray(image.resize((112, 56), Image.Resampling.BICUBIC), np.float32)
    thumbnail = np.asarray(image.resize((56, 56), Image.Resampling.BICUBIC), np.float32)
    expected = [resized[:, :56], resized[:, 56:], thumbnail]
    for tile, array in zip(pixels, expected):
        normalised = (array / 255.0 - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
        assert torch.equal(tile, torch.from_numpy(normalised.transpose(2, 0, 1).copy()))


def test_single_tile_has_no_thumbnail_and_static_mode_is_one_tile():
    image = Image.new('RGB', (64, 64), (200, 10, 10))
    assert InternVLImageProcessor(image_size=56, max_num=6)(image).shape == (1, 3, 56, 56)
    big = Image.new('RGB', (900, 300))
    assert InternVLImageProcessor(image_size=56, max_num=6, dynamic=False)(big).shape == (1, 3, 56, 56)
    assert InternVLImageProcessor(image_size=56, max_num=6, use_thumbnail=False)(big).shape == (3, 3, 56, 56)


def official_pixel_shuffle(x, scale_factor=0.5):
    """InternVLChatModel.pixel_shuffle with ps_version='v2', as published."""
    n, w, h, c = x.size()
    x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
    return x.permute(0, 2, 1, 3).contiguous()


def test_pixel_shuffle_v2_order():
    x = torch.arange(2 * 8 * 8 * 6, dtype=torch.float32).reshape(2, 8, 8, 6)
    out = pixel_shuffle(x, 0.5)
    assert out.shape == (2, 4, 4, 24)
    assert torch.equal(out, official_pixel_shuffle(x))
    # Each output vector is a 2x2 block of neighbours: rows (0, 1) of column 0, then of column 1.
    assert torch.equal(out[0, 0, 0], torch.cat([x[0, 0, 0], x[0, 0, 1], x[0, 1, 0], x[0, 1, 1]]))
    # InternVL2's real shape: 32 x 32 patches of 1024 -> 16 x 16 of 4096 (256 tokens per tile)
    assert pixel_shuffle(torch.zeros(1, 32, 32, 1024), 0.5).shape == (1, 16, 16, 4096)


def test_pixel_shuffle_matches_transformers():
    from transformers.models.internvl.modeling_internvl import InternVLModel as NativeInternVLModel

    x = torch.randn(3, 16, 16, 8)
    assert torch.equal(pixel_shuffle(x, 0.5), NativeInternVLModel.pixel_shuffle(None, x, 0.5))
