"""InternLM2ForCausalLM: Llama-like decoder with packed ``wqkv`` (per KV head: its query heads, then
K, then V), RMSNorm, SwiGLU (``w2(silu(w1 x) * w3 x)``) and dynamic-NTK RoPE. No KV cache: each step
recomputes the sequence (enough for the small models this file serves)."""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_internlm2 import InternLM2Config


class InternLM2RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(variance + self.variance_epsilon)).to(x.dtype)


def _rope(config, seq_len, device):
    """cos, sin ``[seq_len, head_dim]``; dynamic NTK raises the base past max_position_embeddings."""
    dim = config.hidden_size // config.num_attention_heads
    base, scaling = float(config.rope_theta), config.rope_scaling or {}
    if scaling.get('type') == 'dynamic' and seq_len > config.max_position_embeddings:
        factor = scaling['factor']
        base *= (factor * seq_len / config.max_position_embeddings - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim)
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    if scaling.get('type') == 'linear':
        t = t / scaling['factor']
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class InternLM2Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads, self.num_kv = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.groups = self.num_heads // self.num_kv
        self.wqkv = nn.Linear(config.hidden_size, (self.num_heads + 2 * self.num_kv) * self.head_dim, bias=config.bias)
        self.wo = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.bias)

    def forward(self, x, cos, sin, mask):
        b, n, _ = x.shape
        qkv = self.wqkv(x).view(b, n, self.num_kv, self.groups + 2, self.head_dim)
        q = qkv[..., :self.groups, :].reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = qkv[..., -2, :].transpose(1, 2), qkv[..., -1, :].transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(self.groups, dim=1), v.repeat_interleave(self.groups, dim=1)
        scores = (q @ k.transpose(-2, -1)) / self.head_dim ** 0.5 + mask
        attn = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return self.wo((attn @ v).transpose(1, 2).reshape(b, n, -1))


class InternLM2MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class InternLM2DecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention, self.feed_forward = InternLM2Attention(config), InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class InternLM2PreTrainedModel(PreTrainedModel):
    config_class = InternLM2Config
    base_model_prefix = 'model'
    _no_split_modules = ['InternLM2DecoderLayer']

    def _init_weights(self, module):
        pass  # every weight comes from the checkpoint


class InternLM2Model(InternLM2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([InternLM2DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_embeddings

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        x = self.tok_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        b, n, _ = x.shape
        cos, sin = _rope(self.config, n, x.device)
        mask = torch.full((n, n), torch.finfo(x.dtype).min, device=x.device).triu(1)[None, None]
        if attention_mask is not None:  # left/right padding: masked keys get the minimum too
            mask = mask.masked_fill(attention_mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        for layer in self.layers:
            x = layer(x, cos, sin, mask.to(x.dtype))
        return self.norm(x)


class InternLM2ForCausalLM(InternLM2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.tok_embeddings

    def get_output_embeddings(self):
        return self.output

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, **kwargs):
        return CausalLMOutput(logits=self.output(self.model(input_ids, inputs_embeds, attention_mask)).float())

    @torch.no_grad()
    def generate(self, input_ids=None, inputs_embeds=None, attention_mask=None, max_new_tokens=20,
                 eos_token_id=None, **kwargs):
        """Greedy decoding (``do_sample`` is not supported); returns only the new ids when started
        from ``inputs_embeds`` (as transformers does), else prompt + new ids."""
        if kwargs.get('do_sample'):
            raise ValueError("the tiny zoo's InternLM2 remote code decodes greedily only: pass do_sample=False")
        eos = set(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]) - {None}
        embeds = self.model.tok_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        new = []
        for _ in range(max_new_tokens):
            mask = None if attention_mask is None else torch.cat(
                [attention_mask, attention_mask.new_ones(attention_mask.shape[0], len(new))], dim=1)
            token = self.output(self.model(inputs_embeds=embeds, attention_mask=mask)[:, -1]).argmax(-1)
            new.append(token)
            if int(token[0]) in eos:
                break
            embeds = torch.cat([embeds, self.model.tok_embeddings(token)[:, None]], dim=1)
        new = torch.stack(new, dim=1)
        return new if inputs_embeds is not None else torch.cat([input_ids, new], dim=1)
