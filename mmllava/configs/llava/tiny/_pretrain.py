# Re-assignments the tiny LLaVA pretrains share (after ../../_tiny_cpu.py): the tiny CLIP, the captions
# of the synthetic data, three epochs. {{tiny_models}}/NAME: a tiny model, built on first use.
visual_encoder_name_or_path = '{{tiny_models}}/clip_vit'
data_path = data_root + 'pretrain.json'
max_epochs = 3
evaluation_inputs = ['Please describe this picture']
