"""InternLM2TokenizerFast: the fast tokenizer, from ``tokenizer.json`` when the folder has one, else
converted from the sentencepiece ``tokenizer.model`` with Llama's converter (same model kind:
byte-fallback BPE, ``▁`` for spaces); BOS is added as the slow ``InternLM2Tokenizer`` adds it."""
from transformers import PreTrainedTokenizerFast

from .tokenization_internlm2 import InternLM2Tokenizer

try:  # transformers 4.x converts slow tokenizers through this table; 5.x converts sentencepiece itself
    from transformers.convert_slow_tokenizer import SLOW_TO_FAST_CONVERTERS, LlamaConverter

    SLOW_TO_FAST_CONVERTERS.setdefault('InternLM2Tokenizer', LlamaConverter)
except ImportError:
    pass


class InternLM2TokenizerFast(PreTrainedTokenizerFast):
    vocab_files_names = {'vocab_file': 'tokenizer.model', 'tokenizer_file': 'tokenizer.json'}
    slow_tokenizer_class = InternLM2Tokenizer
    model_input_names = ['input_ids', 'attention_mask']
