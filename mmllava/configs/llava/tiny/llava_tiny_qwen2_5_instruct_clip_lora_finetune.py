# Tiny CPU counterpart of the Qwen2.5-3B LLaVA recipe's fine-tune, train type use_lora: LoRA on the LLM:
# the tiny Qwen2.5-format LLM + tiny CLIP on the shipped synthetic shapes data, starting from the
# projector of llava_tiny_qwen2_5_instruct_clip_pretrain.
# It is the config `base_config` names with the variables below re-assigned in its source, as
# --cfg-options does, so derived fields follow; `mmllava copy-cfg` writes it out as one standalone config.
# {{tiny_models}} and {{tiny_data}}: the tiny models and the synthetic data, built on first use into
# mmllava's cache folder. Other paths are taken from the current folder.
import torch

base_config = 'llava_qwen2_5_3b_instruct_clip_vit_large_p14_336_lora_finetune'

llm_name_or_path = '{{tiny_models}}/qwen2_5_instruct'
visual_encoder_name_or_path = '{{tiny_models}}/clip_vit'
pretrained_pth = './work_dirs/llava_tiny_qwen2_5_instruct_clip_pretrain'  # a work dir means its last checkpoint
torch_dtype = torch.float32
use_activation_checkpointing = False
data_root = '{{tiny_data}}/'
data_path = data_root + 'finetune.json'
image_folder = data_root + 'images'
max_length = 256
pad_image_to_square = False
batch_size = 8
dataloader_num_workers = 1  # one worker hides image decoding (docs/benchmarks.md)
pin_memory = False
max_epochs = 3
lr = 1e-3
save_steps = 50
evaluation_freq = 50
evaluation_images = data_root + 'images/eval_0000.png'
evaluation_inputs = ['What color is the shape?', 'Please describe this picture']
evaluation_max_new_tokens = 16
llm_lora_r = 16
llm_lora_alpha = 32
randomness = dict(seed=0, deterministic=False)
