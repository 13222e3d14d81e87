"""The whole LLaVA pipeline learns from pixels: the seeds' workflow on the tiny InternLM2-format
LLaVA and the synthetic shapes data, through the real CLI (train -> eval -> convert -> chat).

Stage 1 trains only the projector on captions (the LLM and CLIP stay frozen); stage 2 fine-tunes
with QLoRA (NF4 LLM + LoRA, LoRA on the vision tower, projector trained, ZeRO-2) on one-word
questions about the shapes' colour. Before stage 2 the model only captions, so its exact-match
accuracy on held-out questions is near zero; after it, at least 90%.

Colour only: with a random frozen tiny CLIP and a few CPU minutes, colour is learned every time,
while shape, count and side questions stay near chance (measured: colour 24/24, shape 5/24, count
11/24, side 13/24 after 650 QLoRA steps), so a test on them would measure luck, not the pipeline.
"""
import json

import pytest

from mmllava.cli import main

PRETRAIN = 'llava_tiny_internlm2_chat_clip_pretrain'
FINETUNE = 'llava_tiny_internlm2_chat_qlora_clip_finetune'
NUM_TRAIN = 600  # distinct images; with a few hundred, the tiny model memorises instead of reading pixels


@pytest.fixture(scope='module')
def trained(tiny_zoo, tmp_path_factory):
    """Pretrain then fine-tune once for the module; returns the paths the tests need."""
    from mmllava.tiny.synthetic import build_synthetic_data

    root = tmp_path_factory.mktemp('learning')
    data = build_synthetic_data(root / 'data', seed=0, num_train=NUM_TRAIN, num_eval=96, kinds=('color',))
    common = [f'llm_name_or_path={tiny_zoo["internlm2_chat"]}', f'visual_encoder_name_or_path={tiny_zoo["clip_vit"]}',
              f'data_root={root / "data"}/', 'evaluation_freq=None', 'save_steps=100000']
    pretrain_dir, finetune_dir = root / 'pretrain', root / 'finetune'
    assert main(['train', PRETRAIN, '--work-dir', str(pretrain_dir), '--cfg-options', *common, 'max_epochs=1']) == 0
    assert main(['train', FINETUNE, '--work-dir', str(finetune_dir), '--deepspeed', 'deepspeed_zero2',
                 '--cfg-options', *common, 'max_epochs=2', f'pretrained_pth={pretrain_dir}']) == 0
    return dict(root=root, data=data, common=common, pretrain=pretrain_dir, finetune=finetune_dir)


def _accuracy(config, checkpoint, trained, out):
    assert main(['eval', config, '--checkpoint', str(checkpoint), '--data', str(trained['data']['eval']),
                 '--image-folder', str(trained['data']['image_folder']), '--out', str(out),
                 '--max-new-tokens', '4', '--cfg-options', *trained['common']]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 96
    return sum(r['correct'] for r in records) / len(records)


def test_finetuned_model_answers_held_out_questions(trained):
    before = _accuracy(PRETRAIN, trained['pretrain'], trained, trained['root'] / 'before.jsonl')
    after = _accuracy(FINETUNE, trained['finetune'], trained, trained['root'] / 'after.jsonl')
    # Before fine-tuning the model writes captions ("two red circles on the left."), not one-word answers.
    assert before <= 0.1, before
    assert after >= 0.9, after


def test_chat_before_and_after_fine_tuning(trained, tiny_zoo, capsys):
    """Seeds 000/002/004: convert the pretrain and the fine-tune checkpoints, ask about the same image."""
    sample = json.loads(trained['data']['eval'].read_text())[0]
    question = sample['conversations'][0]['value'].replace('<image>', '').strip()
    answer = sample['conversations'][1]['value']
    image = trained['data']['image_folder'] / sample['image']

    def convert_and_chat(config, checkpoint, name):
        export = trained['root'] / name
        assert main(['convert', 'pth_to_hf', config, str(checkpoint), str(export), '--cfg-options',
                     *trained['common']]) == 0
        capsys.readouterr()
        assert main(['chat', str(tiny_zoo['internlm2_chat']), '--visual-encoder', str(tiny_zoo['clip_vit']),
                     '--llava', str(export), '--prompt-template', 'internlm2_chat', '--image', str(image),
                     '--prompt', question, '--temperature', '0', '--max-new-tokens', '8', '--no-streamer']) == 0
        return capsys.readouterr().out

    before = convert_and_chat(PRETRAIN, trained['pretrain'], 'pretrain_export')
    after = convert_and_chat(FINETUNE, trained['finetune'], 'finetune_export')
    assert answer not in before.split()
    assert answer in after.split(), after
