"""How far apart two correct float computations of the same values may be, from the dtype and the
size of the reductions, so that a comparison holds on every x86 CPU and thread count.

Two correct evaluations of a sum of ``n`` terms differ only in the order they add: the SIMD width
(AVX2: 8 fp32 lanes, AVX-512: 16), the blocking of the GEMM kernel MKL / oneDNN picks for the CPU,
and how 1 or 2 threads split the sum. The worst case of one order is ``n * u * sum|terms|``
(u = eps / 2; Higham, *Accuracy and Stability of Numerical Algorithms*, eq. 3.5), but rounding
errors of a real sum behave like random signs: with ``lambda = 4`` the error stays below
``lambda * sqrt(n) * u * sum|terms|`` except with probability ~1e-3 per value (Higham & Mary,
"A new approach to probabilistic rounding error analysis", SISC 2019), so two orders differ by at
most ``lambda * sqrt(n) * eps * sum|terms|``; the tests measured their differences 5-50x below it.
AVX512-BF16 and AMX only change products of bf16 operands: fp32 comparisons never meet them, and
a bf16 one says so through ``dtype``.
"""
from __future__ import annotations

import math

import torch

LAMBDA = 4.0
# Reductions one after another in a transformer layer: q/k/v projections, attention scores,
# attention-weighted sum, output projection, MLP.
LAYER_REDUCTIONS = 5


def rounding_tolerance(dtype: torch.dtype, reduction: int, magnitude: float, sequential: int = 1) -> float:
    """Absolute tolerance between two evaluations of values of size ``magnitude`` (the largest
    ``|value|`` compared, or of the terms where they cancel, standing for ``sum|terms|``), each the end of
    ``sequential`` reductions of at most ``reduction`` terms in ``dtype``. Each reduction passes
    its error on at about unit gain (normalised layers), so the errors add up."""
    return LAMBDA * sequential * math.sqrt(reduction) * torch.finfo(dtype).eps * float(magnitude)


def transformer_tolerance(dtype: torch.dtype, layers: int, width: int, magnitude: float, extra: int = 1) -> float:
    """:func:`rounding_tolerance` for the output of ``layers`` transformer layers whose widest
    reduction is ``width`` (the MLP's intermediate size), plus ``extra`` reductions (the head)."""
    return rounding_tolerance(dtype, width, magnitude, LAYER_REDUCTIONS * layers + extra)
