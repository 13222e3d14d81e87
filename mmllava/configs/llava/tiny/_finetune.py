# Re-assignments the tiny LLaVA fine-tunes share (after ../../_tiny_cpu.py): the tiny CLIP and the
# conversations of the synthetic data.
visual_encoder_name_or_path = '{{tiny_models}}/clip_vit'
data_path = data_root + 'finetune.json'
pad_image_to_square = False  # the synthetic images are square already
evaluation_inputs = ['What color is the shape?', 'Please describe this picture']
