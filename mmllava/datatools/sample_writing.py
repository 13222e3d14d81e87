"""Writing sample lists as JSON or JSONL, chosen by the file's extension (reading: ``read_samples``)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable


def write_samples(path: str | os.PathLike, samples: Iterable[Any]) -> Path:
    """Write ``samples`` to ``path``: one JSON object a line for ``.jsonl``, else an indented JSON list.

    Text stays readable (``ensure_ascii=False``: FoodieQA is Chinese); parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open('w', encoding='utf-8') as f:
        if path.suffix == '.jsonl':
            for sample in samples:
                f.write(json.dumps(sample, ensure_ascii=False) + '\n')
        else:
            json.dump(list(samples), f, ensure_ascii=False, indent=2)
            f.write('\n')
    return path
