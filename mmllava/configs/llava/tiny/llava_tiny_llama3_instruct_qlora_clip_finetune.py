# Tiny CPU counterpart of the fine-tune of the LLaVA-Llama-3-8B QLoRA tutorial: the tiny Llama-3-format LLM
# (QLoRA, NF4 on CPU) + tiny CLIP (LoRA) fine-tuned on the shipped synthetic shapes data, starting
# from the projector of llava_tiny_llama3_instruct_clip_pretrain.
# An override: the config `base_config` names, with the variables below (after those of the files in
# `shared_overrides`) re-assigned in its source as --cfg-options does, so derived fields follow.
# {{tiny_models}}/NAME: a tiny model, built on first use into mmllava's cache folder.

base_config = 'llava_llama3_8b_instruct_qlora_clip_vit_large_p14_336_lora_e1_finetune'
shared_overrides = ['../../_tiny_cpu.py', '_finetune.py', '_qlora_finetune.py']

llm_name_or_path = '{{tiny_models}}/llama3_instruct'
pretrained_pth = './work_dirs/llava_tiny_llama3_instruct_clip_pretrain'  # a work dir means its last checkpoint
