# Re-assignments the tiny LLaVA fine-tunes share (after ../../_tiny_cpu.py): the tiny CLIP and the
# conversations of the synthetic data (its images are square already).
visual_encoder_name_or_path = '{{tiny_models}}/clip_vit'
data_path = data_root + 'finetune.json'
pad_image_to_square = False
evaluation_inputs = ['What color is the shape?', 'Please describe this picture']
