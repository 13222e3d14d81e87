# Tiny CPU counterpart of the InternVL2-2B food fine-tune: the tiny official-layout InternVL2 (InternViT
# 56 px tiles, 16 tokens each, InternLM2 LLM) LoRA-fine-tuned on the shipped synthetic shapes data.
# An override: the config `base_config` names, with the variables below (after those of the files in
# `shared_overrides`) re-assigned in its source as --cfg-options does, so derived fields follow.
# {{tiny_models}}/NAME: a tiny model, built on first use into mmllava's cache folder.

base_config = 'internvl_v2_internlm2_2b_lora_finetune_food'
shared_overrides = ['../../_tiny_cpu.py']

from peft import LoraConfig

path = '{{tiny_models}}/internvl2_official'
data_path = data_root + 'finetune.json'
accumulative_counts = 1
max_epochs = 8
lr = 2e-3
weight_decay = 0
save_total_limit = 2
evaluation_inputs = ['What color is the shape?', 'Please describe this picture']
r = 16
lora_alpha = 32
# the tiny vision tower is random (the real one is pretrained): adapt it too, as the tiny LLaVA configs do
visual_encoder_lora = dict(type=LoraConfig, r=8, lora_alpha=16, lora_dropout=0.05, target_modules=None)
