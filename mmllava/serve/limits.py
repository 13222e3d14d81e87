"""The budgets of ``mmllava serve`` (and of the demo's images), checked before any costly work.

- **Images** are checked from their header (PIL's lazy ``Image.open`` reads size and mode without
  decoding) against ``max_image_pixels`` per image and ``max_request_pixels`` per request. A pixel
  counts by what decoding it costs: the budgets are in 8-bit RGB pixels, and a 16-bit grey or an
  alpha pixel, which takes more memory to decode to RGB, counts as more than one
  (:data:`DECODE_BYTES_PER_PIXEL`). Only :data:`IMAGE_FORMATS` are opened. Decoding itself runs
  :data:`DECODE_CONCURRENCY` images at a time (the caller holds the semaphore).
- **Prompt tokens** (image positions included) are refused beyond the model's context or
  ``max_prompt_tokens``, and ``max_tokens`` is capped at the context that remains.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field

from mmllava.constants import DEFAULT_IMAGE_TOKEN

# PIL, torch and the image helpers are imported where used: the CLI reads this module's defaults
# while it builds its argument parser, and must start fast.

# The formats an API client may send (OpenAI's, and BMP). Not every format PIL knows: EPS, for
# one, would run Ghostscript, and TIFF opens in modes (float, 32-bit) no photo needs.
IMAGE_FORMATS = ('PNG', 'JPEG', 'WEBP', 'GIF', 'BMP')  # a JPEG may open as MPO (JPEG frames)
# Peak bytes per pixel to open, load, EXIF-transpose and convert an image of each mode to RGB
# (:func:`decode_image`), measured with ``ru_maxrss`` on 2000x2000 images and rounded up (8-bit RGB
# 8.1, grey 5.1, RGBA 20.1, 16-bit grey 26.1: to_rgb scales it in float64). 8-bit RGB is the unit of
# the pixel budgets. Modes not listed count as the most expensive one.
DECODE_BYTES_PER_PIXEL = {'1': 6, 'L': 6, 'P': 6, 'RGB': 9, 'CMYK': 9, 'YCbCr': 9, 'LA': 21, 'PA': 21, 'RGBA': 21,
                          'P+transparency': 22, 'I;16': 27, 'I;16B': 27, 'I;16L': 27, 'I': 30, 'F': 30}
DECODE_CONCURRENCY = 2
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
DEFAULT_MAX_REQUEST_PIXELS = 2 * DEFAULT_MAX_IMAGE_PIXELS
DEFAULT_MAX_IMAGES = 8


class RequestError(ValueError):
    """A malformed request (400) or one over a budget (413); ``param`` is the offending field's path."""

    def __init__(self, param: str, message: str, status: int = 400):
        super().__init__(f'{param}: {message}')
        self.param = param
        self.status = status


@dataclass(frozen=True)
class Limits:
    """The server's budgets (``None`` for ``max_prompt_tokens``: the model's context)."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    max_images: int = DEFAULT_MAX_IMAGES
    max_prompt_tokens: int | None = None


@dataclass
class PendingImage:
    """An image checked from its header but not decoded yet: its bytes and what decoding will cost."""

    raw: bytes = field(repr=False)
    param: str
    width: int
    height: int
    mode: str
    cost: int  # 8-bit RGB pixels that take as much memory to decode


def _mode_key(img) -> str:
    # A palette with transparency is converted through RGBA (to_rgb), as expensive as RGBA.
    return 'P+transparency' if img.mode == 'P' and 'transparency' in img.info else img.mode


def _mode_name(mode: str) -> str:
    return {'P+transparency': 'transparent palette', 'I;16': '16-bit', 'I;16B': '16-bit', 'I;16L': '16-bit',
            'I': '32-bit', 'F': 'float'}.get(mode, mode)


def decode_cost(width: int, height: int, mode: str) -> int:
    """``width x height`` pixels of ``mode`` in 8-bit RGB pixels of the same decoding memory."""
    per_pixel = DECODE_BYTES_PER_PIXEL.get(mode, max(DECODE_BYTES_PER_PIXEL.values()))
    return math.ceil(width * height * per_pixel / DECODE_BYTES_PER_PIXEL['RGB'])


def inspect_image(raw: bytes, param: str, max_image_pixels: int) -> PendingImage:
    """Read ``raw``'s header (nothing is decoded) and refuse it with :class:`RequestError` if it is
    not an image of :data:`IMAGE_FORMATS` or costs more than ``max_image_pixels`` to decode."""
    from PIL import Image, UnidentifiedImageError

    Image.init()  # registers every plugin (WEBP is not among those PIL loads first)
    try:
        with warnings.catch_warnings():
            # PIL warns (and past twice its limit refuses) from the header alone; our budget decides.
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as img:
                width, height, mode = img.width, img.height, _mode_key(img)
    except UnidentifiedImageError:
        raise RequestError(param, f'the data is not an image in a format this server reads '
                                 f'({", ".join(IMAGE_FORMATS)})') from None
    except Image.DecompressionBombError:
        raise RequestError(param, f'the image has more than twice {Image.MAX_IMAGE_PIXELS} pixels, over the limit '
                                 f'of {max_image_pixels} pixels per image (--max-image-pixels)', 413) from None
    except Exception as e:  # PIL's parsers raise many kinds on damaged data (struct.error, IndexError...)
        raise RequestError(param, f'cannot read the image: {type(e).__name__}: {e}') from None
    cost = decode_cost(width, height, mode)
    if cost > max_image_pixels:
        times = cost / (width * height)
        weight = '' if cost == width * height else f' ({_mode_name(mode)} pixels count {times:.3g} times)'
        raise RequestError(param, f'image of {width}x{height} pixels{weight} is over the limit of {max_image_pixels} '
                                 'pixels per image (--max-image-pixels)', 413)
    return PendingImage(raw, param, width, height, mode, cost)


def check_request_images(images: list[PendingImage], limits: Limits) -> None:
    """Refuse a request with more than ``limits.max_images`` images or ``max_request_pixels`` in all."""
    if len(images) > limits.max_images:
        raise RequestError('messages', f'{len(images)} images, over the limit of {limits.max_images} per request '
                                      '(--max-images)', 413)
    total = sum(image.cost for image in images)
    if total > limits.max_request_pixels:
        raise RequestError('messages', f'the images have {total} pixels in all, over the limit of '
                                      f'{limits.max_request_pixels} per request (--max-request-pixels)', 413)


def decode_image(raw: bytes, param: str):
    """Decode a checked image into an RGB PIL image, as :func:`~mmllava.data.image.load_image` opens a
    file (EXIF orientation, alpha on white); a damaged file is a :class:`RequestError` (400). Hold the
    decoding semaphore."""
    from PIL import Image, ImageOps

    from mmllava.data.image import to_rgb

    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as img:
                img.load()
                ImageOps.exif_transpose(img, in_place=True)  # in place: no second copy of a large image
                return to_rgb(img)
    except Exception as e:  # as in inspect_image: whatever a damaged image makes PIL raise
        raise RequestError(param, f'cannot read the image: {type(e).__name__}: {e}') from None


def context_length(chat_model) -> int | None:
    """The LLM's context (``max_position_embeddings``), or ``None`` when its config does not say."""
    model = chat_model.model
    for part in (getattr(model, 'llm', None), getattr(model, 'language_model', None), model):
        config = getattr(part, 'config', None)
        if config is None:
            continue
        text_config = config.get_text_config() if hasattr(config, 'get_text_config') else config
        length = getattr(text_config, 'max_position_embeddings', None)
        if isinstance(length, int) and length > 0:
            return length
    return None


class PromptBudget:
    """Prompt tokens of a request, counted as ``ChatSession`` will render them, against the model's
    context and ``max_prompt_tokens``; :meth:`check` also caps the request's ``max_new_tokens``."""

    def __init__(self, chat_model, max_prompt_tokens: int | None = None):
        self.chat_model = chat_model
        self.context = context_length(chat_model)
        limits = [n for n in (self.context, max_prompt_tokens) if n is not None]
        self.limit = min(limits) if limits else None
        self.source = ('--max-prompt-tokens' if max_prompt_tokens is not None and max_prompt_tokens == self.limit
                       else "the model's context; --max-prompt-tokens")
        # No token covers more characters than the longest one in the vocabulary: a text longer than
        # limit x that is refused without tokenising it (tokenising megabytes takes seconds).
        vocab = chat_model.tokenizer.get_vocab()
        self.longest_token = max(map(len, vocab), default=1)

    def _over(self, what: str) -> RequestError:
        return RequestError('messages', f'{what}, over the limit of {self.limit} tokens ({self.source})', 413)

    def count(self, request) -> int:
        """Prompt tokens of ``request`` (a ``ChatRequest`` whose images are :class:`PendingImage` s)."""
        from mmllava.templates import render_prompt

        turns, images = [], []
        for past in request.history:
            turns += [f'{DEFAULT_IMAGE_TOKEN}\n' * len(past.images) + past.text, past.answer]
            images += past.images
        turns.append(f'{DEFAULT_IMAGE_TOKEN}\n' * len(request.images) + request.text)
        images += request.images
        # prompt_ids reads only len() of each image's pixel values (its tiles, for InternVL).
        tiles = [range(self._tiles(image)) for image in images]
        return self.chat_model.prompt_ids(render_prompt(self.chat_model.template, turns, request.system),
                                          tiles).shape[1]

    def _tiles(self, image: PendingImage) -> int:
        """The tiles an InternVL processor makes of the image (the larger of both orientations: EXIF
        may turn it); 1 for a fixed-size processor."""
        num_tiles = getattr(self.chat_model.image_processor, 'num_tiles', None)
        if num_tiles is None:
            return 1
        return max(num_tiles(image.width, image.height), num_tiles(image.height, image.width))

    def check(self, request) -> int:
        """Refuse a ``request`` whose prompt is over the limit (:class:`RequestError`, 413), cap its
        ``max_new_tokens`` at the context the prompt leaves, and return its prompt tokens."""
        if self.limit is not None:
            texts = [request.text, request.system or ''] + [t for p in request.history for t in (p.text, p.answer)]
            chars = sum(map(len, texts))
            if chars > self.limit * self.longest_token:
                raise self._over(f'the prompt has {chars} characters, more than {self.limit} tokens can hold')
        tokens = self.count(request)
        if self.limit is not None and tokens > self.limit:
            raise self._over(f'the prompt takes {tokens} tokens (images included)')
        if self.context is not None:
            room = self.context - tokens
            if room < 1:
                raise RequestError('messages', f'the prompt takes {tokens} tokens and leaves no room for an answer '
                                              f"in the model's context of {self.context}", 413)
            settings = request.settings
            settings.max_new_tokens = min(settings.max_new_tokens, room)
        return tokens
