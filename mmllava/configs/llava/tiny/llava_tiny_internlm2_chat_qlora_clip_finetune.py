# Tiny CPU counterpart of the fine-tune of the XTuner LLaVA-InternLM2 tutorial: the tiny InternLM2-format LLM
# (QLoRA, NF4 on CPU) + tiny CLIP (LoRA) fine-tuned on the shipped synthetic shapes data, starting
# from the projector of llava_tiny_internlm2_chat_clip_pretrain.
# An override: the config `base_config` names, with the variables below (after those of the files in
# `shared_overrides`) re-assigned in its source as --cfg-options does, so derived fields follow.
# {{tiny_models}}/NAME: a tiny model, built on first use into mmllava's cache folder.

base_config = 'llava_internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune'
shared_overrides = ['../../_tiny_cpu.py', '_finetune.py', '_qlora_finetune.py']

llm_name_or_path = '{{tiny_models}}/internlm2_chat'
pretrained_pth = './work_dirs/llava_tiny_internlm2_chat_clip_pretrain'  # a work dir means its last checkpoint
