"""``llava_collate``: dataset items -> the padded batch ``LLaVAModel`` takes (docs/architecture.md)."""
from __future__ import annotations

from typing import Sequence

import torch

from mmllava.constants import IGNORE_INDEX
from mmllava.data.worker import failed_sample


def llava_collate(instances: Sequence[dict], pad_token_id: int = 0) -> dict:
    """Right-pad ``input_ids`` (with ``pad_token_id``) and ``labels`` (with ``IGNORE_INDEX``).

    Returns ``{'data': {input_ids, labels, attention_mask, pixel_values}, 'data_samples': None}``,
    the shape mmengine's ``BaseModel.train_step`` passes to ``model(**batch, mode='loss')``.
    ``pixel_values`` stacks the images of the samples that have one, in order, or is None.

    In an mmengine dataloader config write ``collate_fn=dict(type=llava_collate)`` (mmengine
    binds the extra keys with ``functools.partial`` and calls ``collate_fn(instances)``); add
    ``pad_token_id=dataset.pad_token_id`` to pad with the tokenizer's id. The default 0 is safe
    because the model reads ``attention_mask`` and padded positions carry no label.

    Packs from ``mmllava.data.packing.PackedDataset`` (items with ``position_ids``) also give
    ``position_ids``; a row's padding gets positions of its own (0, 1, ...), so it is a separate
    segment that no sample attends to, and ``pixel_values`` holds every pack's images in order.
    """
    if not instances:
        raise ValueError('llava_collate got an empty batch')
    failed = failed_sample(instances)
    if failed is not None:  # a bad sample in a dataloader worker: the batch is its error (data/worker.py)
        return failed
    length = max(len(item['input_ids']) for item in instances)
    packed = 'position_ids' in instances[0]
    # One storage for the integer rows: a dataloader worker hands each storage over separately
    # (a file descriptor round trip each), so one storage instead of three shortens the wait for a batch.
    rows = torch.empty((4 if packed else 3, len(instances), length), dtype=torch.long)
    input_ids, labels, attention_mask = rows[0].fill_(pad_token_id), rows[1].fill_(IGNORE_INDEX), rows[2].zero_()
    position_ids = rows[3].zero_() if packed else None
    for row, item in enumerate(instances):
        n = len(item['input_ids'])
        input_ids[row, :n] = torch.as_tensor(item['input_ids'], dtype=torch.long)
        labels[row, :n] = torch.as_tensor(item['labels'], dtype=torch.long)
        attention_mask[row, :n] = 1
        if packed:
            position_ids[row, :n] = torch.as_tensor(item['position_ids'], dtype=torch.long)
            position_ids[row, n:] = torch.arange(length - n)
    images = [item['pixel_values'] for item in instances if item.get('pixel_values') is not None]
    data = {'input_ids': input_ids, 'labels': labels, 'attention_mask': attention_mask,
            'pixel_values': (torch.cat if packed else torch.stack)(images) if images else None}
    if packed:
        data['position_ids'] = position_ids
    return {'data': data, 'data_samples': None}
