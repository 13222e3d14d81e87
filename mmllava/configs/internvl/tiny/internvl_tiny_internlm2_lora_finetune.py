# Tiny CPU counterpart of the InternVL2-2B food fine-tune: the tiny official-layout InternVL2 (InternViT 56 px
# tiles, 16 tokens each, InternLM2 LLM) LoRA-fine-tuned on the shipped synthetic shapes data.
# It is the config `base_config` names with the variables below re-assigned in its source, as
# --cfg-options does, so derived fields follow; `mmllava copy-cfg` writes it out as one standalone config.
# {{tiny_models}} and {{tiny_data}}: the tiny models and the synthetic data, built on first use into
# mmllava's cache folder. Other paths are taken from the current folder.
import torch
from peft import LoraConfig

base_config = 'internvl_v2_internlm2_2b_lora_finetune_food'

path = '{{tiny_models}}/internvl2_official'
torch_dtype = torch.float32
use_activation_checkpointing = False
data_root = '{{tiny_data}}/'
data_path = data_root + 'finetune.json'
image_folder = data_root + 'images'
max_length = 256
batch_size = 8
accumulative_counts = 1
dataloader_num_workers = 1  # one worker hides image decoding (docs/benchmarks.md)
pin_memory = False
max_epochs = 8
lr = 2e-3
weight_decay = 0
save_steps = 50
save_total_limit = 2
evaluation_freq = 50
evaluation_images = data_root + 'images/eval_0000.png'
evaluation_inputs = ['What color is the shape?', 'Please describe this picture']
evaluation_max_new_tokens = 16
r = 16
lora_alpha = 32
# the tiny vision tower is random (the real one is pretrained): adapt it too, as the tiny LLaVA configs do
visual_encoder_lora = dict(type=LoraConfig, r=8, lora_alpha=16, lora_dropout=0.05, target_modules=None)
randomness = dict(seed=0, deterministic=False)
