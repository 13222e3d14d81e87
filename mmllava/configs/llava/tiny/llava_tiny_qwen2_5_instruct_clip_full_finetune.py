# Tiny CPU counterpart of llava_qwen2_5_3b_instruct_clip_vit_large_p14_336_full_finetune (none):
# the tiny Qwen2.5-format LLM + tiny CLIP on the shipped synthetic shapes data.
# {{tiny_models}} and {{tiny_data}}: the tiny models and the synthetic data, built on first use into
# mmllava's cache folder. Other paths are taken from the current folder.
import torch
from mmengine.hooks import CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from torch.optim import AdamW

from mmllava.pretrained import load_image_processor, load_llm, load_tokenizer, load_vision_encoder
from mmllava.data import LengthGroupedSampler, LLaVADataset, PackedDataset, llava_collate
from mmllava.engine import DatasetInfoHook, EvaluateChatHook, TrainLoop
from mmllava.models import LLaVAModel

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model
llm_name_or_path = '{{tiny_models}}/qwen2_5_instruct'
visual_encoder_name_or_path = '{{tiny_models}}/clip_vit'
# The projector from the pretrain stage: our iter_N.pth, XTuner's iter_2181.pth or LLaVA's mm_projector.bin
pretrained_pth = './work_dirs/llava_tiny_qwen2_5_instruct_clip_pretrain'  # a work dir means its last checkpoint

# Data
data_root = '{{tiny_data}}/'
data_path = data_root + 'finetune.json'
image_folder = data_root + 'images'
prompt_template = 'qwen_chat'
max_length = 256
# Padding-free packing: whole samples share rows of up to max_length tokens, each attending only to
# itself (mmllava.data.packing); batch_size then counts rows. Switch on: --cfg-options pack_to_max_length=True
pack_to_max_length = False

# Scheduler & Optimizer
batch_size = 8  # per device
accumulative_counts = 1
dataloader_num_workers = 1  # one worker hides image decoding (docs/benchmarks.md)
max_epochs = 3
optim_type = AdamW
lr = 2e-4
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

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer = dict(type=load_tokenizer, path=llm_name_or_path)

image_processor = dict(type=load_image_processor, path=visual_encoder_name_or_path)

model = dict(
    type=LLaVAModel,
    freeze_llm=False,
    freeze_visual_encoder=False,
    use_activation_checkpointing=False,
    pretrained_pth=pretrained_pth,
    llm=dict(
        type=load_llm,
        path=llm_name_or_path,
        torch_dtype=torch.float32),
    visual_encoder=dict(type=load_vision_encoder, path=visual_encoder_name_or_path, torch_dtype=torch.float32))

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
llava_dataset = dict(
    type=LLaVADataset,
    data_path=data_path,
    image_folder=image_folder,
    tokenizer=tokenizer,
    image_processor=image_processor,
    template=prompt_template,
    max_length=max_length,
    pad_image_to_square=False)

train_dataset = (dict(type=PackedDataset, dataset=llava_dataset, max_tokens=max_length)
                 if pack_to_max_length else llava_dataset)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    pin_memory=False,
    persistent_workers=dataloader_num_workers > 0,
    dataset=train_dataset,
    sampler=dict(type=LengthGroupedSampler, length_property='modality_length',
                 per_device_batch_size=batch_size * accumulative_counts),
    collate_fn=dict(type=llava_collate))

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
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
log_processor = dict(by_epoch=False)
