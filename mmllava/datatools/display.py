"""Encoded samples as text: what the model reads, and which positions it is trained on.

The one renderer of ``IMAGE_TOKEN_INDEX`` / ``IGNORE_INDEX`` runs (``<image x N>``, ``[-100 x N]``):
``mmllava log-dataset`` and the training log's ``DatasetInfoHook`` both print through it."""
from __future__ import annotations

import itertools
from typing import Sequence

from mmllava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

IMAGE_RUN = '<image x {n}>'
IGNORED_RUN = '[-100 x {n}]'
VIEWS = ('text', 'masked_text', 'input_ids', 'labels')


def _runs(ids: Sequence[int]):
    for value, run in itertools.groupby(int(i) for i in ids):
        yield value, len(list(run)) if value in (IMAGE_TOKEN_INDEX, IGNORE_INDEX) else list(run)


def decode_with_runs(ids: Sequence[int], tokenizer) -> str:
    """Decode ``ids``; image positions print as ``<image x N>``, ignored labels as ``[-100 x N]``."""
    parts = []
    for value, run in _runs(ids):
        if value == IMAGE_TOKEN_INDEX:
            parts.append(IMAGE_RUN.format(n=run))
        elif value == IGNORE_INDEX:
            parts.append(IGNORED_RUN.format(n=run))
        else:
            parts.append(tokenizer.decode(run, skip_special_tokens=False))
    return ''.join(parts)


def ids_with_runs(ids: Sequence[int]) -> str:
    """``ids`` as a list literal with runs of -200 / -100 written ``-200 x N``."""
    parts = []
    for value, run in _runs(ids):
        parts.extend([f'{value} x {run}'] if isinstance(run, int) else [str(i) for i in run])
    return '[' + ', '.join(parts) + ']'


def format_sample(input_ids: Sequence[int], labels: Sequence[int], tokenizer) -> str:
    """Two views of an encoded sample (``DatasetInfoHook``'s log): what the model reads, and what
    it is trained to write."""
    trained = sum(1 for i in labels if i != IGNORE_INDEX)
    return (f'{len(input_ids)} tokens, {trained} trained\n--- input ---\n{decode_with_runs(input_ids, tokenizer)}\n'
            f'--- labels ([-100 x N] = N positions not trained) ---\n{decode_with_runs(labels, tokenizer)}')


def render_view(view: str, input_ids: Sequence[int], labels: Sequence[int], tokenizer) -> str:
    """One of ``VIEWS`` of an encoded sample.

    ``text``: the decoded input; ``masked_text``: the same with every untrained position replaced
    by ``[-100 x N]`` (image positions stay ``<image x N>``), i.e. exactly what the loss sees;
    ``input_ids`` / ``labels``: the numbers.
    """
    if view == 'text':
        return decode_with_runs(input_ids, tokenizer)
    if view == 'masked_text':
        return decode_with_runs([i if i == IMAGE_TOKEN_INDEX else label for i, label in zip(input_ids, labels)],
                                tokenizer)
    if view == 'input_ids':
        return ids_with_runs(input_ids)
    if view == 'labels':
        return ids_with_runs(labels)
    raise ValueError(f'unknown view {view!r}; one of {VIEWS}')
