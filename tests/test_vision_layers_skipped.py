"""``LLaVAModel.encode_images`` leaves out the vision layers after the selected hidden state (the
default ``visual_select_layer=-2`` skips the last), with features equal bit for bit to the whole
tower's; it runs them only when skipping would change the random draws of a training step."""
from __future__ import annotations

import pytest
import torch

PIXELS_SEED = 0


def _model(tiny_zoo, visual_encoder_lora=None, select_layer=-2):
    from mmllava.pretrained import load_llm, load_vision_encoder
    from mmllava.models import LLaVAModel

    torch.manual_seed(0)
    return LLaVAModel(llm=load_llm(tiny_zoo['llama3_instruct'], torch_dtype=torch.float32),
                      visual_encoder=load_vision_encoder(tiny_zoo['clip_vit'], torch_dtype=torch.float32),
                      freeze_llm=True, freeze_visual_encoder=True, use_activation_checkpointing=False,
                      visual_encoder_lora=visual_encoder_lora, visual_select_layer=select_layer).train()


def _tower(model):
    vision = model.visual_encoder
    vision = vision.get_base_model() if hasattr(vision, 'get_base_model') else vision
    return getattr(vision, 'vision_model', vision)


def _pixels(model):
    size = _tower(model).config.image_size
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(PIXELS_SEED))


def _calls_per_layer(model, pixels) -> tuple[torch.Tensor, list[int]]:
    """The features, and how often each vision layer ran to make them."""
    layers = _tower(model).encoder.layers
    calls = [0] * len(layers)
    handles = [layer.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, layer in enumerate(layers)]
    try:
        return model.encode_images(pixels), calls
    finally:
        for handle in handles:
            handle.remove()


def _whole_tower_features(model, pixels, select_layer):
    """What encode_images computed before: every layer, then the selected hidden state."""
    out = model.visual_encoder(pixels, output_hidden_states=True)
    return model.projector(out.hidden_states[select_layer][:, 1:])


@pytest.mark.parametrize('select_layer', [-2, 1])
def test_features_equal_the_whole_towers_without_the_layers_after(tiny_zoo, select_layer):
    model = _model(tiny_zoo, select_layer=select_layer)
    pixels = _pixels(model)
    n_layers = len(_tower(model).encoder.layers)  # 3 in the tiny CLIP
    features, calls = _calls_per_layer(model, pixels)
    kept = n_layers + 1 + select_layer if select_layer < 0 else select_layer
    assert calls == [1] * kept + [0] * (n_layers - kept)
    # the same kernels on the same inputs in the same order: bit for bit, gradients included
    expected = _whole_tower_features(model, pixels, select_layer)
    assert torch.equal(features, expected)
    weight = model.projector[0].weight
    grad, = torch.autograd.grad(features.square().sum(), weight)
    expected_grad, = torch.autograd.grad(expected.square().sum(), weight)
    assert torch.equal(grad, expected_grad)


def test_last_layer_runs_when_skipping_it_would_change_the_random_draws(tiny_zoo):
    from peft import LoraConfig

    model = _model(tiny_zoo, visual_encoder_lora=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05,
                                                            target_modules=['q_proj', 'v_proj']))
    pixels = _pixels(model)
    # training: the last layer's LoRA dropout draws masks, so it runs and the RNG stream is unchanged
    torch.manual_seed(1)
    features, calls = _calls_per_layer(model, pixels)
    assert calls == [1, 1, 1]
    torch.manual_seed(1)
    assert torch.equal(features, _whole_tower_features(model, pixels, -2))
    # evaluating draws nothing: the last layer is left out again
    model.eval()
    with torch.no_grad():
        features, calls = _calls_per_layer(model, pixels)
        assert calls == [1, 1, 0]
        assert torch.equal(features, _whole_tower_features(model, pixels, -2))
