"""Padding-free packing: the packed batch trains exactly like the padded one (loss and gradients),
position ids restart per sample, the attention mask is block-diagonal causal, packs respect the budget."""
from __future__ import annotations

import pytest
import torch
from tolerances import LAYER_REDUCTIONS, rounding_tolerance

from mmllava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mmllava.data import llava_collate
from mmllava.data.packing import PackedDataset, pack_items, plan_packs
from mmllava.errors import MMLLaVAError

IMAGE_TOKENS = 64  # tiny CLIP: 64 px / 8 px patches


@pytest.fixture(scope='module')
def model(tiny_zoo):
    from mmllava.pretrained import load_llm, load_vision_encoder
    from mmllava.models import LLaVAModel

    torch.manual_seed(0)
    model = LLaVAModel(llm=load_llm(tiny_zoo['llama3_instruct'], torch_dtype=torch.float32),
                       visual_encoder=load_vision_encoder(tiny_zoo['clip_vit'], torch_dtype=torch.float32),
                       use_activation_checkpointing=False)
    return model.train()


def _sample(length: int, image: bool, generator: torch.Generator, vocab: int = 400) -> dict:
    """Random tokens: BOS, an image block if ``image``, a prompt (not trained), an answer (trained)."""
    ids = torch.randint(1, vocab, (length,), generator=generator).tolist()
    labels = [IGNORE_INDEX] * length
    start = 1
    if image:
        ids[1:1 + IMAGE_TOKENS] = [IMAGE_TOKEN_INDEX] * IMAGE_TOKENS
        start = 1 + IMAGE_TOKENS
    answer = start + (length - start) // 2
    labels[answer:] = ids[answer:]
    return {'input_ids': ids, 'labels': labels,
            'pixel_values': torch.randn(3, 64, 64, generator=generator) if image else None}


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(batch['data'], mode='loss')['loss']
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('with_images', [False, True], ids=['text', 'images'])
def test_packed_loss_and_grads_equal_padded(model, with_images):
    generator = torch.Generator().manual_seed(1)
    lengths = [90, 17, 130, 75, 41, 100]
    samples = [_sample(n, with_images and n > IMAGE_TOKENS + 4 and i % 3 != 1, generator)
               for i, n in enumerate(lengths)]
    padded = llava_collate(samples)
    packs = plan_packs(lengths, max_tokens=150)
    assert len(packs) < len(samples)  # several samples really share rows
    packed = llava_collate([pack_items([samples[i] for i in pack]) for pack in packs])
    assert packed['data']['input_ids'].shape[1] <= 150

    loss, grads = _loss_and_grads(model, padded)
    packed_loss, packed_grads = _loss_and_grads(model, packed)
    # fp32: packing changes only the order of sums (other row lengths, the masked softmax over
    # fewer keys), through the LLM's 2 layers (and CLIP's first 2 with images) and the head,
    # forward and backward; the weight gradients also sum over all 453 tokens. A leak of
    # attention across samples moves them by percents.
    layers = 2 + (2 if with_images else 0)
    tokens = sum(lengths)

    def tolerance(expected):
        return rounding_tolerance(torch.float32, tokens, expected.abs().max(),
                                  sequential=2 * (LAYER_REDUCTIONS * layers + 1))

    torch.testing.assert_close(packed_loss, loss, rtol=0, atol=tolerance(loss))
    assert grads.keys() == packed_grads.keys() and grads
    if with_images:
        assert any(name.startswith('projector') for name in grads)
    for name, grad in grads.items():
        # A bias's gradient may cancel to ~0 (keys': softmax ignores a shift shared by all keys) from
        # terms as large as its weight's gradient: those set the scale of the rounding.
        scale = torch.maximum(grad.abs().max(), grads.get(name.rsplit('.', 1)[0] + '.weight', grad).abs().max())
        torch.testing.assert_close(packed_grads[name], grad, rtol=0, atol=tolerance(scale), msg=name)


def test_position_ids_restart_and_padding_is_its_own_segment():
    generator = torch.Generator().manual_seed(2)
    samples = [_sample(n, False, generator) for n in (3, 2, 4)]
    batch = llava_collate([pack_items(samples[:2]), pack_items(samples[2:])])['data']
    assert batch['position_ids'].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert batch['attention_mask'].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # the first token of every sample is never a target (unpacked, nothing precedes it)
    assert batch['labels'][0, 0] == IGNORE_INDEX and batch['labels'][0, 3] == IGNORE_INDEX
    assert batch['labels'][0, 4] == samples[1]['labels'][1]


def test_transformers_builds_block_diagonal_causal_mask(model):
    """The mask SDPA gets for packed rows: causal inside each sample, nothing across samples."""
    from transformers.masking_utils import create_causal_mask

    assert model.llm.config._attn_implementation == 'sdpa'
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0]])
    embeds = torch.zeros(1, 6, model.llm.config.hidden_size)
    mask = create_causal_mask(config=model.llm.config, inputs_embeds=embeds, attention_mask=None,
                              past_key_values=None, position_ids=position_ids)
    segment = torch.tensor([0, 0, 0, 1, 1, 2])
    expected = (segment[:, None] == segment[None, :]) & torch.ones(6, 6, dtype=torch.bool).tril()
    assert torch.equal(mask[0, 0].bool(), expected)


def test_packed_images_stay_in_sample_order():
    generator = torch.Generator().manual_seed(3)
    a, b, c = (_sample(80, True, generator) for _ in range(3))
    batch = llava_collate([pack_items([a, b]), pack_items([c])])['data']
    expected = torch.stack([a['pixel_values'], b['pixel_values'], c['pixel_values']])
    assert torch.equal(batch['pixel_values'], expected)


def test_plan_packs_fills_rows_within_budget():
    lengths = [100, 30, 60, 250, 90, 20, 150, 10, 70, 200]
    packs = plan_packs(lengths, max_tokens=256, seed=5)
    assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 256 for pack in packs)
    assert len(packs) == -(-sum(lengths) // 256)  # best fit reaches the lower bound here
    assert plan_packs(lengths, 256, seed=5) == packs
    with pytest.raises(MMLLaVAError, match='longer than the pack budget'):
        plan_packs(lengths, max_tokens=200)


def test_packed_dataset_lengths_keep_modalities_apart():
    class Dataset(torch.utils.data.Dataset):
        modality_length = [50, -40, 30, -20, 60]
        pad_token_id = 7

        def __getitem__(self, index):
            n = abs(self.modality_length[index])
            return {'input_ids': [index] * n, 'labels': [index] * n, 'pixel_values': None}

    packed = PackedDataset(Dataset(), max_tokens=100)
    assert packed.num_samples == 5 and packed.pad_token_id == 7
    for pack, length in zip(packed.packs, packed.modality_length):
        tokens = sum(abs(Dataset.modality_length[i]) for i in pack)
        assert abs(length) == tokens
        assert (length > 0) == any(Dataset.modality_length[i] > 0 for i in pack)
    item = packed[0]
    assert len(item['input_ids']) == len(item['position_ids']) == abs(packed.modality_length[0])
