"""Data: LLaVA datasets, conversation encoding, image preprocessing, batching and sampling."""
from mmllava.data.collate import llava_collate
from mmllava.data.encode import encode_conversation, tokenize_with_images
from mmllava.data.image import ImageProcessor, expand2square, load_image
from mmllava.data.llava_dataset import LLaVADataset
from mmllava.data.packing import PackedDataset
from mmllava.data.samplers import LengthGroupedSampler

__all__ = ['ImageProcessor', 'LLaVADataset', 'LengthGroupedSampler', 'PackedDataset', 'encode_conversation',
           'expand2square', 'llava_collate', 'load_image', 'tokenize_with_images']
