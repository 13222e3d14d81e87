"""InternVisionModel (InternViT): patch + class embeddings, pre-norm blocks with layer scales, packed qkv."""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput

from .configuration_intern_vit import InternVisionConfig


class InternRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)


def _norm(config, size):
    if config.norm_type == 'rms_norm':
        return InternRMSNorm(size, config.layer_norm_eps)
    return nn.LayerNorm(size, eps=config.layer_norm_eps)


class InternVisionEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config.hidden_size
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, c))
        self.patch_embedding = nn.Conv2d(config.num_channels, c, config.patch_size, config.patch_size)
        self.grid = config.image_size // config.patch_size
        self.position_embedding = nn.Parameter(torch.zeros(1, self.grid ** 2 + 1, c))

    def _position(self, height, width):
        pos = self.position_embedding[:, 1:]
        if (height, width) == (self.grid, self.grid):
            return pos
        pos = pos.float().reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(height, width), mode='bicubic', align_corners=False)
        return pos.reshape(1, -1, height * width).permute(0, 2, 1).to(self.position_embedding.dtype)

    def forward(self, pixel_values):
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        batch, _, height, width = patches.shape
        patches = patches.flatten(2).transpose(1, 2)
        embeddings = torch.cat([self.class_embedding.expand(batch, 1, -1).to(patches.dtype), patches], dim=1)
        return embeddings + torch.cat([self.position_embedding[:, :1], self._position(height, width)], dim=1)


class InternAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, c // config.num_attention_heads
        self.qkv = nn.Linear(c, 3 * c, bias=config.qkv_bias)
        self.proj = nn.Linear(c, c)
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            self.q_norm = InternRMSNorm(c, config.layer_norm_eps)
            self.k_norm = InternRMSNorm(c, config.layer_norm_eps)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.qk_normalization:
            q = self.q_norm(q.transpose(1, 2).flatten(-2)).view(b, n, self.num_heads, -1).transpose(1, 2)
            k = self.k_norm(k.transpose(1, 2).flatten(-2)).view(b, n, self.num_heads, -1).transpose(1, 2)
        attn = ((q * self.head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class InternMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.act = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class InternVisionEncoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config.hidden_size
        self.attn, self.mlp = InternAttention(config), InternMLP(config)
        self.norm1, self.norm2 = _norm(config, c), _norm(config, c)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(c))
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(c))

    def forward(self, x):
        x = x + self.attn(self.norm1(x)) * self.ls1
        return x + self.mlp(self.norm2(x)) * self.ls2


class InternVisionEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([InternVisionEncoderLayer(config) for _ in range(config.num_hidden_layers)])


class InternVisionModel(PreTrainedModel):
    config_class = InternVisionConfig
    main_input_name = 'pixel_values'
    _no_split_modules = ['InternVisionEncoderLayer']

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = InternVisionEmbeddings(config)
        self.encoder = InternVisionEncoder(config)
        self.post_init()

    def _init_weights(self, module):
        pass  # every weight comes from the checkpoint

    def forward(self, pixel_values, output_hidden_states=False, return_dict=True):
        x = self.embeddings(pixel_values)
        hidden_states = [x]
        for layer in self.encoder.layers:
            x = layer(x)
            hidden_states.append(x)
        return BaseModelOutput(last_hidden_state=x,
                               hidden_states=tuple(hidden_states) if output_hidden_states else None)
