"""The LLaVA projector: vision features -> LLM embedding space (LLaVA-1.5's ``mlp2x_gelu``)."""
from __future__ import annotations

from torch import nn


class Projector(nn.Sequential):
    """``Linear(vision, llm)`` followed by ``depth - 1`` x ``(GELU, Linear(llm, llm))``.

    Being a plain ``nn.Sequential`` keeps its state-dict keys (``0.weight``, ``2.weight``) the
    same as original LLaVA's ``mm_projector`` so conversions are a prefix change.
    """

    def __init__(self, visual_hidden_size: int, llm_hidden_size: int, depth: int = 2, bias: bool = True):
        if depth < 1:
            raise ValueError(f'projector depth must be >= 1, got {depth}')
        layers = [nn.Linear(visual_hidden_size, llm_hidden_size, bias=bias)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(llm_hidden_size, llm_hidden_size, bias=bias)]
        super().__init__(*layers)
        self.depth = depth
