"""QLoRA trains through the trainable NF4 layout on every CPU, whatever evaluated the model before.

bitsandbytes 0.50 repacks a ``Linear4bit`` weight into an inference-only CPU layout the first time
the layer runs in eval mode without grad on a CPU with AVX512-BF16; training through that layout
has no autograd kernel (wrong gradients). ``EvaluateChatHook`` runs exactly such a forward before
training. These tests run on every machine: where the CPU has AVX512-BF16 the first one fails
without ``keep_4bit_training_layout``; everywhere, the second checks the switch itself.
"""
from __future__ import annotations

import inspect
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from llava_checkpoints import FINETUNE, cfg_options, sample_image
from tolerances import rounding_tolerance

from mmllava.engine import EvaluateChatHook

DATA_ROOT = Path(__file__).resolve().parents[1] / 'data' / 'synthetic'
STEPS = 3


def _cfg(zoo):
    from mmllava.config import load_config, parse_cfg_options

    cfg = load_config(FINETUNE, parse_cfg_options([*cfg_options(zoo), f'data_root={DATA_ROOT}/']))
    cfg.model.pretrained_pth = None
    return cfg


def _model(cfg):
    """The tiny QLoRA LLaVA of the config, LoRA adapters and projector perturbed so every trained
    parameter gets a non-zero gradient (LoRA's B starts at zero), the same on every call."""
    from mmllava.config import build

    torch.manual_seed(0)
    model = build(cfg.model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p += 0.05 * torch.randn(p.shape, generator=gen)
    return model


def _linear4bit_layers(model):
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down in each of the tiny LLM's 2 layers
    return layers


def _chat_hook(cfg, tmp_path):
    from mmllava.config import build

    image = tmp_path / 'eval.png'
    sample_image().save(image)
    return EvaluateChatHook(tokenizer=build(cfg.tokenizer), image_processor=build(cfg.image_processor),
                            evaluation_inputs=['What color is the shape?'], evaluation_images=str(image),
                            prompt_template=cfg.prompt_template, max_new_tokens=4)


def _runner(model):
    return SimpleNamespace(model=model, iter=0, logger=logging.getLogger('test_qlora_cpu_layout'))


def _batch(cfg):
    from mmllava.config import build
    from mmllava.data import llava_collate

    dataset = build(cfg.llava_dataset)
    return llava_collate([dataset[i] for i in range(4)], pad_token_id=dataset.pad_token_id)['data']


def _train(model, batch):
    """``STEPS`` AdamW steps on one batch: the losses and, per step, every trained parameter's gradient."""
    model.train()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([p for _, p in params], lr=5e-3)
    losses, grads = [], []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = model(batch, mode='loss')['loss']
        loss.backward()
        losses.append(loss.detach())
        # (the vision tower's last layer is below visual_select_layer=-2: its adapters get no grad)
        grads.append({n: p.grad.clone() for n, p in params if p.grad is not None})
        optimizer.step()
    return losses, grads


def test_chat_evaluation_before_training_leaves_losses_and_gradients_unchanged(tiny_zoo, tmp_path):
    # Meaningful where bitsandbytes.functional.has_avx512bf16() (there it fails without the fix);
    # elsewhere the same assertions hold and guard the hook against any other state it could leave.
    cfg = _cfg(tiny_zoo)
    batch = _batch(cfg)
    plain_losses, plain_grads = _train(_model(cfg), batch)

    model = _model(cfg)
    _chat_hook(cfg, tmp_path).before_train(_runner(model))  # eval mode, no grad: the trigger on AVX512-BF16
    losses, grads = _train(model, batch)

    # Same process, same kernels, same order of operations: equal to the bit, whatever the CPU.
    # (Without the fix, on AVX512-BF16 the first loss already differs: bf16 absmax, another kernel.)
    assert plain_losses[-1] < plain_losses[0]  # the run trains
    assert [float(x) for x in losses] == [float(x) for x in plain_losses]
    for step, (got, expected) in enumerate(zip(grads, plain_grads)):
        assert got.keys() == expected.keys()
        differing = [n for n in expected if not torch.equal(got[n], expected[n])]
        assert differing == [], f'step {step}'
    first = plain_grads[0]
    assert any('lora_A' in n and first[n].abs().max() > 0 for n in first)  # gradients through the 4-bit layers


def test_no_linear4bit_of_a_training_model_can_take_the_packed_cpu_path(tiny_zoo, tmp_path):
    import bitsandbytes as bnb

    # The switch is the per-layer attribute bitsandbytes' forward reads: if a release renames it,
    # setting ours would silently do nothing, so this fails first.
    assert 'self.support_avx512bf16_for_cpu' in inspect.getsource(bnb.nn.Linear4bit.forward)

    cfg = _cfg(tiny_zoo)
    model = _model(cfg)
    layers = _linear4bit_layers(model)

    def in_training_layout():
        return [layer.support_avx512bf16_for_cpu is False
                and not getattr(layer.weight.quant_state, 'packing_format_for_cpu', False) for layer in layers]

    assert all(in_training_layout())  # after the training setup
    _chat_hook(cfg, tmp_path).before_train(_runner(model))
    assert all(in_training_layout())  # after an evaluation
    assert model.training  # the hook put it back


def test_a_packed_weight_is_unpacked_before_training(tiny_zoo):
    """Whatever packed a weight (code that switched the flag on again), ``model.train()`` unpacks it,
    and the layer's gradient is the one of its dequantised weight. Packing is plain torch code,
    so this runs on any CPU; the packed kernel (AVX512-BF16 only) is never called."""
    import bitsandbytes.functional as bnbf

    model = _model(_cfg(tiny_zoo)).eval()
    layer = _linear4bit_layers(model)[0]
    nibbles = layer.weight.data.clone()
    layer.weight.data, layer.weight.quant_state = bnbf._convert_weight_packed_for_cpu(layer.weight.data,
                                                                                    layer.weight.quant_state)
    assert layer.weight.quant_state.packing_format_for_cpu
    with pytest.warns(UserWarning, match='1 bitsandbytes 4-bit weights were packed for CPU inference and are unpacked'):
        model.train()
    assert not layer.weight.quant_state.packing_format_for_cpu
    assert torch.equal(layer.weight.data, nibbles)  # the 4-bit codes come back exactly

    x = torch.randn(3, layer.in_features, requires_grad=True)
    upstream = torch.randn(3, layer.out_features)
    (layer(x) * upstream).sum().backward()
    dequantised = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    expected = upstream @ dequantised
    # fp32: one out_features-term dot product per element, summed in another order by bitsandbytes
    torch.testing.assert_close(x.grad, expected, rtol=0,
                               atol=rounding_tolerance(torch.float32, layer.out_features, expected.abs().max()))


def test_chat_evaluation_leaves_the_training_state_as_it_found_it(tiny_zoo, tmp_path):
    """Dropout modes (a part kept in eval on purpose included), ``use_cache``, the generation config,
    gradient checkpointing and the RNG are what they were before the hook generated."""
    cfg = _cfg(tiny_zoo)
    cfg.model.use_activation_checkpointing = True
    model = _model(cfg).train()
    model.visual_encoder.eval()  # e.g. a frozen tower kept without dropout
    llm = model.llm.get_base_model()

    def state():
        return dict(modes=[(n, m.training) for n, m in model.named_modules()],
                    use_cache=llm.config.use_cache, generation=llm.generation_config.to_dict(),
                    checkpointing=[(n, m.gradient_checkpointing) for n, m in model.named_modules()
                                   if hasattr(m, 'gradient_checkpointing')],
                    requires_grad=[(n, p.requires_grad) for n, p in model.named_parameters()],
                    rng=torch.get_rng_state().tolist())

    before = state()
    assert any(on for _, on in before['checkpointing'])  # the comparison covers a checkpointed model
    assert any(training for _, training in before['modes']) and not model.visual_encoder.training
    _chat_hook(cfg, tmp_path).before_train(_runner(model))
    assert state() == before
