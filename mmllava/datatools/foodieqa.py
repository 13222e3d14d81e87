"""``mmllava data foodieqa``: FoodieQA single-image questions (``sivqa_tidy.json``) -> LLaVA format.

Training samples are exactly what the InternVL2-2B food fine-tune's ``process_food.py`` writes::

    {"image": food_meta.food_file,
     "conversations": [{"from": "human", "value": question + "\\n<image>"},
                       {"from": "gpt", "value": choices[int(answer)] + "，图中的菜是" + food_meta.food_name}]}

The evaluation form (``eval_form=True``) keeps ``choices`` and ``answer`` (an int) so ``mmllava eval``
can score multiple choice. FoodieQA is licensed for evaluation only (CC BY-NC-ND 4.0): mmllava ships
this converter, never the data.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mmllava.constants import DEFAULT_IMAGE_TOKEN
from mmllava.data.llava_dataset import read_samples
from mmllava.datatools.sample_writing import write_samples
from mmllava.errors import MMLLaVAError

ANSWER_JOINER = '，图中的菜是'  # full-width comma, as the seed's script


def _field(entry: Any, index: int, *keys: str):
    """``entry[k1][k2]...`` or a one-line error naming the entry and the missing field."""
    value = entry
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise MMLLaVAError(f'entry {index}: missing field {".".join(keys[:depth + 1])!r}')
        value = value[key]
    return value


def convert_entry(entry: dict, index: int = 0, eval_form: bool = False) -> dict:
    """One ``sivqa_tidy.json`` entry -> one LLaVA sample (see the module docstring)."""
    question = _field(entry, index, 'question')
    choices = _field(entry, index, 'choices')
    answer = _field(entry, index, 'answer')
    food_file = _field(entry, index, 'food_meta', 'food_file')
    food_name = _field(entry, index, 'food_meta', 'food_name')
    try:
        correct = choices[int(answer)]
    except (ValueError, TypeError, IndexError):
        raise MMLLaVAError(f'entry {index}: answer {answer!r} is not an index into its '
                           f'{len(choices) if isinstance(choices, list) else 0} choices') from None
    sample = {'image': food_file,
              'conversations': [{'from': 'human', 'value': f'{question}\n{DEFAULT_IMAGE_TOKEN}'},
                                {'from': 'gpt', 'value': f'{correct}{ANSWER_JOINER}{food_name}'}]}
    if eval_form:
        sample.update(choices=list(choices), answer=int(answer))
    return sample


def convert_file(input_path: str | os.PathLike, output_path: str | os.PathLike,
                 image_root: str | os.PathLike | None = None, eval_form: bool = False) -> int:
    """Convert ``input_path`` into ``output_path`` (JSON or JSONL by extension); return the count.

    With ``image_root``, every ``food_file`` must exist under it (the folder to use as the config's
    ``image_folder``); the first missing one is reported with the number missing.
    """
    entries = read_samples(input_path)
    try:
        samples = [convert_entry(entry, index, eval_form) for index, entry in enumerate(entries)]
    except MMLLaVAError as e:
        raise MMLLaVAError(f'{input_path}: {e}') from None
    if image_root is not None:
        missing = [s['image'] for s in samples if not (Path(image_root) / s['image']).is_file()]
        if missing:
            raise MMLLaVAError(f'{len(missing)} of {len(samples)} images are not under --image-root '
                               f'{image_root}, e.g. {missing[0]}')
    write_samples(output_path, samples)
    return len(samples)
