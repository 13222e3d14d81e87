"""``mmllava bench``: steady-state training speed of a config, through the mmengine runner and through
a bare PyTorch loop on the same model, batches and optimizer, so the framework's overhead is one ratio.

``measure``: per-step timing, token counts and peak memory; ``runs``: the two training loops;
``report``: the JSON record and the human table. docs/benchmarks.md has the measured figures.
"""
