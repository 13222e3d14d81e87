"""Exports of trained models: our ``iter_N.pth`` -> XTuner / transformers Llava / original LLaVA
folders, LoRA merging (also from bitsandbytes-quantised bases) and building an untrained LLaVA.

Import the submodule you need; this package imports nothing eagerly (``mmllava --help`` stays fast).
"""
