"""The former name of ``mmllava.pretrained`` (and of ``mmllava.pretrained.internvl_folder`` as
``mmllava.builders.internvl``), kept so that configs written before the rename still load: the ones
users copied (``from mmllava.builders import load_llm``) and the ones earlier runs dumped into their
work dirs (``type='mmllava.builders.load_tokenizer'``). New configs import ``mmllava.pretrained``.
"""
import sys

from mmllava.pretrained import load_image_processor, load_llm, load_tokenizer, load_vision_encoder
from mmllava.pretrained import internvl_folder as internvl

sys.modules[f'{__name__}.internvl'] = internvl  # `from mmllava.builders.internvl import load_internvl`

__all__ = ['internvl', 'load_image_processor', 'load_llm', 'load_tokenizer', 'load_vision_encoder']
