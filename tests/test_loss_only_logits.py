"""``labelled_loss`` (LM head only at labelled positions, optionally chunked and recomputed) equals the
full computation ``CrossEntropy(lm_head(hidden)[:, :-1], labels[:, 1:])``, in value and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tolerances import rounding_tolerance

from mmllava.constants import IGNORE_INDEX


@pytest.fixture(scope='module')
def model(tiny_zoo):
    from mmllava.pretrained import load_llm, load_vision_encoder
    from mmllava.models import LLaVAModel

    return LLaVAModel(llm=load_llm(tiny_zoo['llama3_instruct'], torch_dtype=torch.float32),
                      visual_encoder=load_vision_encoder(tiny_zoo['clip_vit'], torch_dtype=torch.float32),
                      use_activation_checkpointing=False).train()


def _inputs(model, generator):
    hidden = torch.randn(3, 20, model.llm.config.hidden_size, generator=generator, requires_grad=True)
    labels = torch.randint(0, model.llm.config.vocab_size, (3, 20), generator=generator)
    labels[torch.rand(3, 20, generator=generator) < 0.6] = IGNORE_INDEX  # prompt, image and padding positions
    return hidden, labels


def _grads(loss, hidden, lm_head):
    return torch.autograd.grad(loss, [hidden, lm_head.weight])


def _tolerance(model, expected) -> float:
    """fp32: the same terms summed in another order (per chunk, then over chunks): the head's
    hidden-size dot products, the log-softmax over the vocabulary, the mean over the 60 positions;
    the backward pass runs the same sums again. A lost or doubled chunk moves the loss by ~1/20."""
    config = model.llm.config
    return rounding_tolerance(torch.float32, max(config.vocab_size, config.hidden_size, 60),
                              expected.abs().max(), sequential=2 * 3)


@pytest.mark.parametrize('chunk', [4096, 3], ids=['one_chunk', 'chunked'])
def test_labelled_loss_equals_full_logits(model, chunk):
    generator = torch.Generator().manual_seed(0)
    hidden, labels = _inputs(model, generator)
    lm_head = model.llm.get_output_embeddings()
    model.loss_chunk_size = chunk
    try:
        loss = model.labelled_loss(hidden, labels)
    finally:
        model.loss_chunk_size = 4096
    logits = lm_head(hidden)[:, :-1]
    full = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    if chunk == 3:
        assert (labels[:, 1:] != IGNORE_INDEX).sum() > 2 * chunk  # several chunks, each recomputed
    torch.testing.assert_close(loss, full, rtol=0, atol=_tolerance(model, full))
    for got, expected in zip(_grads(loss, hidden, lm_head), _grads(full, hidden, lm_head)):
        torch.testing.assert_close(got, expected, rtol=0, atol=_tolerance(model, expected))


def test_labelled_loss_without_grad_and_without_labels(model):
    generator = torch.Generator().manual_seed(1)
    hidden, labels = _inputs(model, generator)
    model.loss_chunk_size = 3
    try:
        with torch.no_grad():
            loss = model.labelled_loss(hidden, labels)
    finally:
        model.loss_chunk_size = 4096
    logits = model.llm.get_output_embeddings()(hidden)[:, :-1]
    full = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss, full.detach(), rtol=0, atol=_tolerance(model, full))
    nothing = model.labelled_loss(hidden, torch.full_like(labels, IGNORE_INDEX))
    assert nothing.item() == 0.0 and nothing.requires_grad  # graph stays connected for every rank
