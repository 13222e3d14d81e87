"""``mmllava data repeat``: the sample list repeated N times (the tutorials' ``repeat.py``), to make a
small hand-written data set long enough for a few hundred training iterations."""
from __future__ import annotations

import os

from mmllava.data.llava_dataset import read_samples
from mmllava.datatools.sample_writing import write_samples
from mmllava.errors import MMLLaVAError


def repeat_samples(samples: list, times: int) -> list:
    """``samples`` repeated ``times`` times, in order (``samples * times``)."""
    if times < 1:
        raise MMLLaVAError(f'-n must be at least 1, got {times}')
    return list(samples) * times


def repeat_file(input_path: str | os.PathLike, output_path: str | os.PathLike, times: int) -> int:
    """Write ``input_path``'s samples repeated ``times`` times to ``output_path``; return the count.

    JSON or JSONL on either side, by extension.
    """
    repeated = repeat_samples(read_samples(input_path), times)
    write_samples(output_path, repeated)
    return len(repeated)
