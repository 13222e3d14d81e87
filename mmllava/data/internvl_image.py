"""InternVL2's dynamic high-resolution preprocessing, in PIL + numpy (no torchvision).

An image is cut into ``cols x rows`` tiles of ``image_size`` pixels (InternVL2: 448), the grid
chosen among all with ``min_num <= cols x rows <= max_num`` tiles:

1. candidates sorted by tile count (area);
2. the grid whose aspect ratio ``cols / rows`` is closest to the image's wins;
3. on a tie with an earlier candidate, the later (larger) grid wins only when the image has more
   than half the pixels that grid covers: ``W x H > 0.5 x image_size^2 x cols x rows``.

The image is resized (BICUBIC) to ``(image_size x cols, image_size x rows)`` and cropped row-major;
when that makes more than one tile, a thumbnail (the whole image at ``image_size^2``) is appended.
Tiles are normalised with the ImageNet mean and std. This follows ``dynamic_preprocess`` of
InternVL's own code (and XTuner's copy of it), comparison for comparison.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmllava.data.image import to_rgb
from mmllava.errors import MMLLaVAError, concerning
from mmllava.formats.internvl_native import force_image_size, is_native_internvl, native_config_to_official, tokens_per_tile
from mmllava.paths import require_dir
from mmllava.pretrained.folder_reading import read_json

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def candidate_grids(min_num: int, max_num: int) -> list[tuple[int, int]]:
    """Every ``(cols, rows)`` with ``min_num <= cols x rows <= max_num``, by area (InternVL's order)."""
    grids = {(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
             if min_num <= i * j <= max_num}
    # Python's sort is stable: grids of equal area keep the set's iteration order, as in InternVL.
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def closest_grid(width: int, height: int, grids: list[tuple[int, int]], image_size: int) -> tuple[int, int]:
    """The grid for a ``width x height`` image (rules 2 and 3 of the module docstring)."""
    aspect = width / height
    best, best_diff = (1, 1), float('inf')
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


class InternVLImageProcessor:
    """``processor(pil_image) -> FloatTensor[tiles, 3, image_size, image_size]``.

    ``dynamic=False`` makes one tile per image (a plain resize). ``tokens_per_tile`` is what the
    model turns one tile into (InternVL2: 256); ``num_tiles(width, height)`` says how many tiles an
    image of that size makes, without touching pixels.
    """

    def __init__(self, image_size: int = 448, min_num: int = 1, max_num: int = 12, use_thumbnail: bool = True,
                 dynamic: bool = True, tokens_per_tile: int = 256, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD):
        if not 1 <= min_num <= max_num:
            raise MMLLaVAError(f'dynamic tiling needs 1 <= min_dynamic_patch <= max_dynamic_patch, '
                               f'got {min_num} and {max_num}')
        self.image_size = image_size
        self.min_num, self.max_num = min_num, max_num
        self.use_thumbnail = use_thumbnail
        self.dynamic = dynamic
        self.tokens_per_tile = tokens_per_tile
        self.image_mean = np.asarray(image_mean, np.float32)
        self.image_std = np.asarray(image_std, np.float32)
        self.grids = candidate_grids(min_num, max_num)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, max_dynamic_patch: int | None = None) -> 'InternVLImageProcessor':
        """The settings of an official InternVL ``config.json`` (``force_image_size``, ``min/max_dynamic_patch``,
        ``use_thumbnail``, ``dynamic_image_size``); ``max_dynamic_patch`` overrides the folder's."""
        with concerning('path', path):  # what fails inside is about this folder
            config = read_json(require_dir(path, 'path') / 'config.json', 'path')
            if is_native_internvl(config):  # a transformers-native folder: its settings in official names
                config = native_config_to_official(config, path)
            if 'vision_config' not in config or 'downsample_ratio' not in config:
                raise MMLLaVAError(f'path: {Path(path)} is not an official InternVL folder (no vision_config / '
                                   'downsample_ratio in config.json)')
        return cls(image_size=force_image_size(config), min_num=int(config.get('min_dynamic_patch', 1)),
                   max_num=int(max_dynamic_patch or config.get('max_dynamic_patch', 12)),
                   use_thumbnail=bool(config.get('use_thumbnail', True)),
                   dynamic=bool(config.get('dynamic_image_size', True)), tokens_per_tile=tokens_per_tile(config))

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """``(cols, rows)`` of the tiles an image of ``width x height`` pixels is cut into."""
        return closest_grid(width, height, self.grids, self.image_size) if self.dynamic else (1, 1)

    def num_tiles(self, width: int, height: int) -> int:
        """Tiles (thumbnail included) an image of ``width x height`` pixels makes."""
        cols, rows = self.grid(width, height)
        return cols * rows + (1 if self.use_thumbnail and cols * rows > 1 else 0)

    def tiles(self, image: Image.Image) -> list[Image.Image]:
        """The tile images, row-major, then the thumbnail (when more than one tile)."""
        cols, rows = self.grid(*image.size)
        size = self.image_size
        resized = image.resize((size * cols, size * rows), resample=Image.Resampling.BICUBIC)
        tiles = [resized.crop((c * size, r * size, (c + 1) * size, (r + 1) * size))
                 for r in range(rows) for c in range(cols)]
        if self.use_thumbnail and len(tiles) > 1:
            tiles.append(image.resize((size, size), resample=Image.Resampling.BICUBIC))
        return tiles

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Preprocess one PIL image into ``[tiles, 3, image_size, image_size]`` (float32)."""
        arrays = [np.asarray(tile, dtype=np.float32) / 255.0 for tile in self.tiles(to_rgb(image))]
        normalised = (np.stack(arrays) - self.image_mean) / self.image_std
        return torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))
