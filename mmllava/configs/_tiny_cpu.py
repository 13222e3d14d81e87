# Re-assignments every tiny config shares (named in its `shared_overrides`): the synthetic shapes data,
# sizes a CPU trains in minutes, fp32 weights (bf16 autocast needs a GPU), a short chat evaluation and
# a fixed seed. {{tiny_data}}: the synthetic data, built on first use into mmllava's cache folder.
import torch

torch_dtype = torch.float32
use_activation_checkpointing = False  # small activations: no need to recompute them
data_root = '{{tiny_data}}/'
image_folder = data_root + 'images'
max_length = 256  # image positions included
batch_size = 8
dataloader_num_workers = 1  # one worker hides image decoding (docs/benchmarks.md)
pin_memory = False  # no GPU to copy batches to
save_steps = 50
evaluation_freq = 50
evaluation_images = data_root + 'images/eval_0000.png'
evaluation_max_new_tokens = 16
randomness = dict(seed=0, deterministic=False)
