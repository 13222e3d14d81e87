# LLaVA pretrain (stage 1): Llama-3-8B-Instruct + CLIP-ViT-L/14-336, both frozen; only the projector
# trains, on image-caption pairs. Its iter_N.pth is the `pretrained_pth` of the Llama-3 fine-tune config.
import torch
from mmengine.hooks import DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.optim import CosineAnnealingLR, LinearLR
from mmengine.visualization import LocalVisBackend, TensorboardVisBackend, Visualizer
from torch.optim import AdamW

from mmllava.pretrained import load_image_processor, load_llm, load_tokenizer, load_vision_encoder
from mmllava.data import LengthGroupedSampler, LLaVADataset, PackedDataset, llava_collate
from mmllava.engine import (CheckpointHook, DatasetInfoHook, EvaluateChatHook, ThroughputHook, TrainLoop,
                            TrainSummaryHook, mixed_precision_optim_wrapper)
from mmllava.models import LLaVAModel

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model
llm_name_or_path = 'meta-llama/Meta-Llama-3-8B-Instruct'
visual_encoder_name_or_path = 'openai/clip-vit-large-patch14-336'
torch_dtype = torch.bfloat16  # the weights' dtype (and QLoRA's compute dtype)
use_activation_checkpointing = True  # recompute activations in the backward pass: less memory

# Data
data_root = './data/llava_data/'
data_path = data_root + 'LLaVA-Pretrain/blip_laion_cc_sbu_558k.json'
image_folder = data_root + 'LLaVA-Pretrain/images'
prompt_template = 'llama3_chat'
max_length = 2048  # image positions included (XTuner counts <image> as 1: its int(2048 - (336 / 14)**2))
# Several whole samples per row of max_length positions, attention kept inside each sample
# (mmllava.data.packing); batch_size then counts rows. Switch on: --cfg-options pack_to_max_length=True
pack_to_max_length = False
pad_image_to_square = False  # pad to a square in the image mean colour before resizing

# Scheduler & Optimizer
batch_size = 32  # per device
accumulative_counts = 1
dataloader_num_workers = 4  # per device
pin_memory = True  # page-locked batches copy faster to the GPU
max_epochs = 1
optim_type = AdamW
lr = 1e-3
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1  # grad clip
warmup_ratio = 0.03

# Save
save_steps = 500
save_total_limit = 2  # Maximum checkpoints to keep (-1 means unlimited)

# Evaluate the generation performance during the training
evaluation_freq = 500
SYSTEM = ''
evaluation_images = data_root + 'test_img/oph.jpg'
evaluation_inputs = ['请描述一下这张照片', 'Please describe this picture']
evaluation_max_new_tokens = 600  # longest answer generated

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer = dict(type=load_tokenizer, path=llm_name_or_path)

image_processor = dict(type=load_image_processor, path=visual_encoder_name_or_path)

model = dict(
    type=LLaVAModel,
    freeze_llm=True,
    freeze_visual_encoder=True,
    use_activation_checkpointing=use_activation_checkpointing,
    llm=dict(
        type=load_llm,
        path=llm_name_or_path,
        torch_dtype=torch_dtype),
    visual_encoder=dict(type=load_vision_encoder, path=visual_encoder_name_or_path, torch_dtype=torch_dtype))

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
    pad_image_to_square=pad_image_to_square)

train_dataset = (dict(type=PackedDataset, dataset=llava_dataset, max_tokens=max_length)
                 if pack_to_max_length else llava_dataset)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    pin_memory=pin_memory,
    persistent_workers=dataloader_num_workers > 0,
    dataset=train_dataset,
    sampler=dict(type=LengthGroupedSampler, length_property='modality_length',
                 per_device_batch_size=batch_size * accumulative_counts),
    collate_fn=dict(type=llava_collate))

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
# bf16 autocast and loss scaling (mmengine's AmpOptimWrapper) on a CUDA device; plain fp32 steps on a CPU
optim_wrapper = dict(
    type=mixed_precision_optim_wrapper,
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
         max_new_tokens=evaluation_max_new_tokens),
    dict(type=ThroughputHook),  # tokens/s and peak memory in the log
    dict(type=TrainSummaryHook),  # the run's header and summary in the terminal
]

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=10),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=save_steps, max_keep_ckpts=save_total_limit),
    sampler_seed=dict(type=DistSamplerSeedHook))

env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))

# the loss and lr curves in WORK_DIR/TIMESTAMP/vis_data, for TensorBoard
visualizer = dict(type=Visualizer, vis_backends=[dict(type=LocalVisBackend), dict(type=TensorboardVisBackend)])
log_level = 'INFO'
# load from which checkpoint (an iter_N.pth of this run)
load_from = None
# whether to resume training from the loaded checkpoint
resume = False
randomness = dict(seed=None, deterministic=False)
log_processor = dict(by_epoch=False)
