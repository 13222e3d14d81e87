# InternVL2-2B full fine-tune on FoodieQA: seed 003's data and schedule, the LLM and projector fully trained
# (the vision tower stays frozen, as in InternVL's own 2B fine-tune recipe). Needs ZeRO-2/3 on real GPUs.
# Edit path, data_root, data_path and image_folder, then
#   mmllava train THIS_FILE --deepspeed deepspeed_zero2
#   mmllava convert internvl_to_official THIS_FILE work_dirs/THIS_NAME/iter_640.pth OUT_DIR
#   mmllava chat OUT_DIR --image food.jpg
# To continue an interrupted run set load_from to its iter_N.pth and resume = True (bottom), or pass --resume.
# FoodieQA -> this JSON: mmllava data foodieqa -i sivqa_tidy.json -o sivqa_llava.json (evaluation-only license).
import torch
from mmengine.hooks import CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
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
path = '/root/share/new_models/OpenGVLab/InternVL2-2B'

# Data
data_root = '/root/share/datasets/FoodieQA/'  # your data path
data_path = data_root + 'sivqa_llava.json'
image_folder = data_root  # your image folder path
prompt_template = 'internlm2_chat'
max_length = 8192
max_dynamic_patch = 6  # tiles per image at most (+ a thumbnail); InternVL2-2B's own config says 12

# Scheduler & Optimizer
batch_size = 4  # per device
accumulative_counts = 2
dataloader_num_workers = 4
max_epochs = 10
optim_type = AdamW
# official 1024 -> 4e-5
lr = 3e-5
betas = (0.9, 0.999)
weight_decay = 0.05
max_norm = 1  # grad clip
warmup_ratio = 0.03

# Save
save_steps = 64
save_total_limit = -1  # Maximum checkpoints to keep (-1 means unlimited)

# Evaluate the generation performance during the training
evaluation_freq = 64
SYSTEM = ''
evaluation_images = data_root + 'test_img/oph.jpg'  # any image of yours
evaluation_inputs = ['请描述一下这张照片', 'Please describe this picture']

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer = dict(type=load_tokenizer, path=path)

image_processor = dict(type=load_internvl_image_processor, path=path, max_dynamic_patch=max_dynamic_patch)

model = dict(
    type=InternVLModel,
    internvl=dict(type=load_internvl, path=path, torch_dtype=torch.bfloat16),
    freeze_llm=False,
    freeze_visual_encoder=True)

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
    pin_memory=True,
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
         prompt_template=prompt_template)
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
randomness = dict(seed=None, deterministic=False)
log_processor = dict(by_epoch=False)
