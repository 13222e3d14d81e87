# Tiny CPU counterpart of internvl_v2_internlm2_2b_lora_finetune_food: the tiny official-layout InternVL2
# (InternViT 56 px tiles, 16 tokens each, InternLM2 LLM) LoRA-fine-tuned on the shipped synthetic shapes data.
# {{tiny_models}} and {{tiny_data}}: the tiny models and the synthetic data, built on first use into
# mmllava's cache folder. Other paths are taken from the current folder.
import torch
from mmengine.hooks import CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from peft import LoraConfig
from torch.optim import AdamW

from mmllava.pretrained import load_tokenizer
from mmllava.pretrained.internvl_folder import load_internvl, load_internvl_image_processor
from mmllava.data import LengthGroupedSampler
from mmllava.data.internvl_dataset import InternVLDataset, internvl_collate
from mmllava.engine import DatasetInfoHook, EvaluateChatHook, TrainLoop
from mmllava.models import InternVLModel

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model
path = '{{tiny_models}}/internvl2_official'

# Data
data_root = '{{tiny_data}}/'
data_path = data_root + 'finetune.json'
image_folder = data_root + 'images'
prompt_template = 'internlm2_chat'
max_length = 256
max_dynamic_patch = 6

# Scheduler & Optimizer
batch_size = 8  # per device
accumulative_counts = 1
dataloader_num_workers = 1  # one worker hides image decoding (docs/benchmarks.md)
max_epochs = 8
optim_type = AdamW
lr = 2e-3
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1  # grad clip
warmup_ratio = 0.03

# Save
save_steps = 50
save_total_limit = 2  # Maximum checkpoints to keep (-1 means unlimited)

# Evaluate the generation performance during the training
evaluation_freq = 50
SYSTEM = ''
evaluation_images = data_root + 'images/eval_0000.png'
evaluation_inputs = ['What color is the shape?', 'Please describe this picture']

# LoRA
r = 16
lora_alpha = 32
lora_dropout = 0.05

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer = dict(type=load_tokenizer, path=path)

image_processor = dict(type=load_internvl_image_processor, path=path, max_dynamic_patch=max_dynamic_patch)

model = dict(
    type=InternVLModel,
    use_activation_checkpointing=False,
    internvl=dict(type=load_internvl, path=path, torch_dtype=torch.float32),
    freeze_llm=True,
    freeze_visual_encoder=True,
    # comment the following lines if you don't want to use Lora in llm
    llm_lora=dict(type=LoraConfig, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=None,
                  task_type='CAUSAL_LM'),
    # the tiny vision tower is random (the real one is pretrained): adapt it too, as the tiny LLaVA config does
    visual_encoder_lora=dict(type=LoraConfig, r=8, lora_alpha=16, lora_dropout=0.05, target_modules=None),
)

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
internvl_dataset = dict(
    type=InternVLDataset,
    data_path=data_path,
    image_folder=image_folder,
    tokenizer=tokenizer,
    image_processor=image_processor,
    template=prompt_template,
    max_length=max_length)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    pin_memory=False,
    persistent_workers=dataloader_num_workers > 0,
    dataset=internvl_dataset,
    sampler=dict(type=LengthGroupedSampler, length_property='modality_length',
                 per_device_batch_size=batch_size * accumulative_counts),
    collate_fn=dict(type=internvl_collate))

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
# AmpOptimWrapper runs bf16 autocast on CUDA; on a CPU mmllava uses a plain OptimWrapper.
optim_wrapper = dict(
    type=AmpOptimWrapper,
    optimizer=dict(type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
    loss_scale='dynamic',
    dtype='bfloat16')

param_scheduler = [
    dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0, end=warmup_ratio * max_epochs,
         convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=warmup_ratio * max_epochs, end=max_epochs,
         convert_to_iter_based=True)
]

train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
custom_hooks = [
    dict(type=DatasetInfoHook, tokenizer=tokenizer),
    dict(type=EvaluateChatHook,
         tokenizer=tokenizer,
         image_processor=image_processor,
         every_n_iters=evaluation_freq,
         evaluation_inputs=evaluation_inputs,
         evaluation_images=evaluation_images,
         system=SYSTEM,
         prompt_template=prompt_template,
         max_new_tokens=16)
]

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=10),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=save_steps, max_keep_ckpts=save_total_limit),
    sampler_seed=dict(type=DistSamplerSeedHook))

env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))

visualizer = None
log_level = 'INFO'
# load from which checkpoint (an iter_N.pth of this run)
load_from = None
# whether to resume training from the loaded checkpoint
resume = False
randomness = dict(seed=0, deterministic=False)
log_processor = dict(by_epoch=False)
