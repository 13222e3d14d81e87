"""Images: safe loading, LLaVA's pad-to-square, and CLIP preprocessing in PIL + numpy.

``ImageProcessor`` reproduces transformers' ``CLIPImageProcessor`` (resize the shortest edge with
BICUBIC, center crop, rescale, normalise) without torchvision, and knows how many patch tokens
its output makes for the vision tower it was saved with.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from mmllava.paths import require_dir
from mmllava.errors import ImageError, MMLLaVAError, PathNotFoundError, concerning

# PIL's own default limit (about 89.5 megapixels), raised as an error instead of a warning.
DEFAULT_MAX_PIXELS = 89_478_485
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resolve_image_path(path: str | os.PathLike, image_folder: str | os.PathLike | None = None,
                       allow_absolute_paths: bool = False) -> Path:
    """``image_folder / path``, refusing paths that leave ``image_folder``.

    Data files come from elsewhere: a ``../`` or an absolute path in them must not read
    arbitrary files. The check is lexical (``normpath``), so symlinks the user placed inside the
    folder keep working. ``allow_absolute_paths=True`` lifts the confinement.
    """
    if image_folder is None:
        return Path(path)
    folder = os.path.normpath(os.path.abspath(image_folder))
    full = os.path.normpath(os.path.join(folder, path))
    if not allow_absolute_paths and os.path.commonpath([folder, full]) != folder:
        raise ImageError(f'image path {str(path)!r} leaves the image folder {folder}')
    return Path(full)


def load_image(path: str | os.PathLike, image_folder: str | os.PathLike | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, allow_absolute_paths: bool = False) -> Image.Image:
    """Open an image as RGB: EXIF orientation applied, alpha composited on white.

    Raises ``MMLLaVAError`` naming the file when it is missing, unreadable, truncated, larger than
    ``max_pixels`` or outside ``image_folder``.
    """
    full = resolve_image_path(path, image_folder, allow_absolute_paths)
    with _reading(full), Image.open(full) as img:
        _check_pixels(img, full, max_pixels)
        img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)


def check_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, verify: bool = False) -> tuple[int, int]:
    """Check an image file without decoding it; return its ``(width, height)``.

    Reads the header (format, size: the pixel limit is checked) and, with ``verify``, runs PIL's
    ``verify`` (walks the file's structure and checksums, e.g. every PNG chunk's CRC, so truncated
    or damaged files are found at a fraction of the cost of decoding). Raises ``MMLLaVAError`` as
    ``load_image`` does.
    """
    with _reading(path), Image.open(path) as img:
        _check_pixels(img, path, max_pixels)
        if verify:
            img.verify()
        return img.size


def _check_pixels(img: Image.Image, path, max_pixels: int) -> None:
    if img.width * img.height > max_pixels:
        raise ImageError(f'{path}: image of {img.width}x{img.height} pixels exceeds max_pixels={max_pixels}')


@contextlib.contextmanager
def _reading(path):
    """Turn PIL's and the OS's errors while reading ``path`` into one-line ``MMLLaVAError``s."""
    try:
        with warnings.catch_warnings():
            # PIL warns about large images before our own pixel limit reports them as an error.
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            yield
    except FileNotFoundError:
        raise PathNotFoundError(f'image file not found: {path}', value=path) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f'{path}: cannot read image: {e}') from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparent pixels become white (not black, as a bare convert does)."""
    if img.mode == 'P' and 'transparency' in img.info:
        img = img.convert('RGBA')
    if img.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
        rgba = img.convert('RGBA')
        background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert('RGB')
    if img.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):
        # 16/32-bit grayscale: scale to 8 bits (PIL's convert would clip everything above 255).
        array = np.asarray(img, dtype=np.float64)
        peak = array.max() if array.max() > 0 else 1.0
        img = Image.fromarray((array * (255.0 / peak)).round().astype(np.uint8), 'L')
    return img.convert('RGB')


def expand2square(img: Image.Image, background_rgb: tuple[int, int, int]) -> Image.Image:
    """Pad the short side so the image is square, centred on ``background_rgb`` (LLaVA's pad mode)."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    result = Image.new(img.mode, (side, side), background_rgb)
    result.paste(img, ((side - width) // 2, (side - height) // 2))
    return result


def _height_width(size, name: str) -> tuple[int, int] | int:
    """A size from a preprocessor config: an int, {shortest_edge}, or {height, width}."""
    if isinstance(size, int):
        return size
    if isinstance(size, dict) and 'shortest_edge' in size:
        return int(size['shortest_edge'])
    if isinstance(size, dict) and 'height' in size and 'width' in size:
        return int(size['height']), int(size['width'])
    raise MMLLaVAError(f'unsupported {name} {size!r}: expected an int, {{"shortest_edge"}} or {{"height", "width"}}')


class ImageProcessor:
    """CLIP preprocessing: ``processor(pil_image) -> FloatTensor[3, crop_h, crop_w]``.

    ``size`` is the shortest edge after resizing (or ``(height, width)`` for a fixed resize),
    ``crop_size`` the center crop, ``resample`` a PIL filter number (3 = BICUBIC, as CLIP's).
    ``num_image_tokens`` is the number of patch features the vision tower makes for one image
    (CLS excluded), ``(crop_h / patch_size) * (crop_w / patch_size)``.
    """

    def __init__(self, size=224, crop_size=224, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
                 resample: int = 3, rescale_factor: float = 1 / 255, patch_size: int = 14,
                 do_resize: bool = True, do_center_crop: bool = True, do_rescale: bool = True,
                 do_normalize: bool = True):
        self.size = _height_width(size, 'size')
        crop = _height_width(crop_size, 'crop_size')
        self.crop_size = (crop, crop) if isinstance(crop, int) else crop
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.resample = Image.Resampling(resample)
        self.rescale_factor = rescale_factor
        self.patch_size = patch_size
        self.do_resize, self.do_center_crop = do_resize, do_center_crop
        self.do_rescale, self.do_normalize = do_rescale, do_normalize
        if any(side % patch_size for side in self.crop_size):
            raise MMLLaVAError(f'crop_size {self.crop_size} is not a multiple of patch_size {patch_size}')

    @property
    def num_image_tokens(self) -> int:
        """Patch features per image: ``(crop_h / patch) * (crop_w / patch)``."""
        return (self.crop_size[0] // self.patch_size) * (self.crop_size[1] // self.patch_size)

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        """The mean colour as 8-bit RGB: padding with it normalises to zero (LLaVA's choice)."""
        return tuple(int(m * 255) for m in self.image_mean)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> 'ImageProcessor':
        """Read ``preprocessor_config.json`` (or ``processor_config.json``'s ``image_processor``)
        and the patch/image size of the vision config in the folder's ``config.json``."""
        with concerning('image_processor', path):  # what fails inside is about this folder
            folder = require_dir(path, 'image_processor')
            settings = _read_processor_settings(folder)
            keys = ('size', 'crop_size', 'image_mean', 'image_std', 'resample', 'rescale_factor',
                    'do_resize', 'do_center_crop', 'do_rescale', 'do_normalize')
            kwargs = {k: settings[k] for k in keys if settings.get(k) is not None}
            vision = _read_vision_config(folder)
            if 'patch_size' in vision:
                kwargs['patch_size'] = _pair(vision['patch_size'])[0]
            processor = cls(**kwargs)
            if 'image_size' in vision and processor.crop_size != _pair(vision['image_size']):
                raise MMLLaVAError(f'{folder}: the processor crops to {processor.crop_size} but the vision '
                                   f'tower expects {vision["image_size"]} images')
            return processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Preprocess one RGB PIL image into a float tensor ``[3, H, W]``."""
        image = to_rgb(image)
        if self.do_resize:
            image = image.resize(self._resized_size(image.size), resample=self.resample)
        array = np.asarray(image)
        if self.do_center_crop:
            array = _center_crop(array, self.crop_size)
        array = array.astype(np.float32)
        if self.do_rescale:
            array = array * np.float32(self.rescale_factor)
        if self.do_normalize:
            array = (array - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    def _resized_size(self, width_height: tuple[int, int]) -> tuple[int, int]:
        if isinstance(self.size, tuple):
            return self.size[1], self.size[0]
        width, height = width_height
        # Same rounding as transformers' get_resize_output_image_size (int() truncates).
        if width <= height:
            return self.size, int(self.size * height / width)
        return int(self.size * width / height), self.size


def _center_crop(array: np.ndarray, crop_size: tuple[int, int]) -> np.ndarray:
    """Crop ``[H, W, C]`` to ``crop_size``, zero-padding first when the image is smaller (as transformers)."""
    crop_h, crop_w = crop_size
    height, width = array.shape[:2]
    if height < crop_h or width < crop_w:
        padded = np.zeros((max(height, crop_h), max(width, crop_w), array.shape[2]), array.dtype)
        top, left = (padded.shape[0] - height + 1) // 2, (padded.shape[1] - width + 1) // 2
        padded[top:top + height, left:left + width] = array
        array, (height, width) = padded, padded.shape[:2]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return array[top:top + crop_h, left:left + crop_w]


def _pair(value) -> tuple[int, int]:
    """A config's size given as an int or a ``[height, width]`` list."""
    return (int(value), int(value)) if isinstance(value, (int, float)) else (int(value[0]), int(value[1]))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise MMLLaVAError(f'{path}: cannot read: {e}') from None


def _read_processor_settings(folder: Path) -> dict:
    if (folder / 'preprocessor_config.json').is_file():
        return _read_json(folder / 'preprocessor_config.json')
    if (folder / 'processor_config.json').is_file():
        nested = _read_json(folder / 'processor_config.json').get('image_processor')
        if isinstance(nested, dict):
            return nested
    raise MMLLaVAError(f'{folder}: no preprocessor_config.json (nor processor_config.json with image_processor)')


def _read_vision_config(folder: Path) -> dict:
    """The vision tower's config: ``vision_config`` of a CLIP/LLaVA config, or a vision-only config."""
    if not (folder / 'config.json').is_file():
        return {}
    config = _read_json(folder / 'config.json')
    return config.get('vision_config') or config
