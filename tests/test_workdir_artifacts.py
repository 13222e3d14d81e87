"""Every artifact mmllava writes is an input it accepts, for a LLaVA and an InternVL tiny config.

A short run (4 iterations, a checkpoint every 2; the LLaVA one under ``--deepspeed``, so its
checkpoints are DeepSpeed folders, the InternVL one plain ``iter_N.pth`` files) writes its config
into the work dir. That config, with no ``--cfg-options``, then goes through ``train --resume``
(the resumed losses are the run's), ``check-dataset``, ``log-dataset``, ``convert pth_to_hf`` to
every export format and ``eval --checkpoint``. ``eval`` and ``chat`` on each export give the
checkpoint's own answers (one prompt path): the same greedy predictions, a text-only first turn,
and a text-only turn after an image turn. ``EvaluateChatHook`` logged the same answer in training.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmllava.cli import main

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / 'data' / 'synthetic'
IMAGE = DATA / 'images' / 'eval_0000.png'
QUESTION = 'What color is the shape?'  # an evaluation_inputs entry of both configs
SHORT = ['batch_size=2', 'max_epochs=0.031', 'save_steps=2',  # 4 iterations, a checkpoint every 2
         'default_hooks.logger.interval=1', 'log_processor.window_size=1', 'evaluation_freq=None']
FAMILIES = {
    'llava': ('llava_tiny_internlm2_chat_qlora_clip_finetune', ('xtuner', 'huggingface', 'official')),
    'internvl': ('internvl_tiny_internlm2_lora_finetune', ('huggingface', 'official')),
}


def _options(family: str, zoo) -> list[str]:
    if family == 'internvl':
        return [f'path={zoo["internvl2_official"]}', f'data_root={DATA}/', *SHORT]
    return [f'llm_name_or_path={zoo["internlm2_chat"]}', f'visual_encoder_name_or_path={zoo["clip_vit"]}',
            f'data_root={DATA}/', 'pretrained_pth=None', 'model.llm.quantization_config=None', *SHORT,
            'lr=1e-5']  # at 1e-3 four steps teach it to answer <|im_end|> first: empty answers compare nothing


def _train(family: str, *args) -> None:
    """``mmllava train ARGS``: LLaVA under DeepSpeed ZeRO-2 in its own process (it sets up a
    process group), InternVL in this one."""
    if family == 'internvl':
        assert main(['train', *map(str, args)]) == 0
        return
    result = subprocess.run([sys.executable, '-m', 'mmllava.cli', 'train', *map(str, args),
                             '--deepspeed', 'deepspeed_zero2'], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _losses(work_dir: Path) -> dict[int, float]:
    scalars = next(work_dir.glob('*/vis_data/scalars.json')).read_text().splitlines()
    return {record['step']: record['loss'] for record in map(json.loads, scalars) if 'loss' in record}


@pytest.fixture(scope='module', params=sorted(FAMILIES))
def run(request, tiny_zoo, tmp_path_factory):
    """The short run of a family: ``{family, config (the work-dir copy), work_dir, exports}``."""
    family = request.param
    name, formats = FAMILIES[family]
    root = tmp_path_factory.mktemp(family)
    work_dir = root / 'work'
    torch.set_num_threads(1)  # tiny matrices on a shared machine
    _train(family, name, '--work-dir', work_dir, '--cfg-options', *_options(family, tiny_zoo))
    config = work_dir / f'{name}.py'
    checkpoint = work_dir / 'iter_4.pth'
    assert checkpoint.is_dir() == (family == 'llava')  # a DeepSpeed folder, or a file
    for fmt in formats:
        assert main(['convert', 'pth_to_hf', str(config), str(checkpoint), str(root / fmt), '--fp32',
                     '--save-format', fmt]) == 0
    return dict(family=family, config=config, work_dir=work_dir, checkpoint=checkpoint, root=root,
                exports={fmt: root / fmt for fmt in formats})


def _model_args(run, fmt: str, zoo) -> list[str]:
    """``MODEL [--llava ...]`` for ``chat`` / ``eval`` of an export."""
    if fmt == 'xtuner':
        return [str(zoo['internlm2_chat']), '--visual-encoder', str(zoo['clip_vit']),
                '--llava', str(run['exports'][fmt])]
    return [str(run['exports'][fmt])]


def test_work_dir_config_resumes_with_the_same_losses(run, tmp_path):
    text = run['config'].read_text()
    # the user's config (the optimizer wrapper it names), not the run's rewrite of it for DeepSpeed
    assert 'torch.float32' in text and 'mixed_precision_optim_wrapper' in text
    assert 'DeepSpeedOptimWrapper' not in text
    assert 'strategy' not in text and 'launcher' not in text
    losses = _losses(run['work_dir'])
    assert sorted(losses) == [1, 2, 3, 4]
    resumed = tmp_path / 'resumed'
    _train(run['family'], run['config'], '--work-dir', resumed, '--resume', run['work_dir'] / 'iter_2.pth')
    again = _losses(resumed)
    assert sorted(again) == [3, 4]
    assert again == pytest.approx({step: losses[step] for step in (3, 4)}, rel=1e-6)


def test_work_dir_config_checks_and_logs_the_dataset(run, capsys):
    assert main(['check-dataset', str(run['config']), '--no-verify-images']) == 0
    assert main(['log-dataset', str(run['config']), '-n', '1']) == 0
    assert 'What' in capsys.readouterr().out


def _predictions(capsys, path: Path, *args) -> list[str]:
    assert main(['eval', *args, '--data', str(DATA / 'eval.json'), '--limit', '3', '--max-new-tokens', '6',
                 '--out', str(path)]) == 0
    capsys.readouterr()
    return [json.loads(line)['prediction'] for line in path.read_text().splitlines()]


def test_eval_of_the_checkpoint_and_of_every_export_agree(run, tiny_zoo, capsys, tmp_path):
    expected = _predictions(capsys, tmp_path / 'checkpoint.jsonl', str(run['config']),
                            '--checkpoint', str(run['checkpoint']))
    assert len(expected) == 3 and any(p.strip() for p in expected)
    for fmt in run['exports']:
        assert _predictions(capsys, tmp_path / f'{fmt}.jsonl', *_model_args(run, fmt, tiny_zoo)) == expected, fmt


def _checkpoint_session(run, max_new_tokens: int):
    """``(model, ChatSession)`` of the training checkpoint, loaded as ``eval --checkpoint`` loads it (greedy)."""
    from mmllava.chat.loader import chat_model_for
    from mmllava.chat.session import ChatSession, GenerationSettings
    from mmllava.config import build
    from mmllava.convert.pth_to_hf import load_trained_model

    model, cfg = load_trained_model(run['config'], run['checkpoint'])
    chat_model = chat_model_for(model, build(cfg.tokenizer), cfg.prompt_template, build(cfg.image_processor))
    return model, ChatSession(chat_model, settings=GenerationSettings(max_new_tokens=max_new_tokens))


def _checkpoint_answers(run, turns) -> list[str]:
    """The checkpoint's answers (6 new tokens) to ``turns`` of ``(text, image or None)``, in one conversation."""
    from mmllava.data.image import load_image

    _, session = _checkpoint_session(run, 6)
    return [session.ask(text, image=load_image(image) if image else None) for text, image in turns]


def _chat(capsys, *args) -> list[str]:
    capsys.readouterr()
    assert main(['chat', *args, '--temperature', '0', '--max-new-tokens', '6', '--no-streamer']) == 0
    return capsys.readouterr().out.splitlines()


def test_text_only_turns_in_chat_for_every_export(run, tiny_zoo, capsys):
    """A first turn without an image, and one without an image after an image turn (issue 19)."""
    text_first = _checkpoint_answers(run, [('hi', None)])
    image_then_text = _checkpoint_answers(run, [(QUESTION, IMAGE), ('hi', None)])
    assert text_first[0].strip() and image_then_text[1].strip()
    assert image_then_text[1] != text_first[0]  # the second turn sees the first (image) turn
    for fmt in run['exports']:
        args = _model_args(run, fmt, tiny_zoo)
        assert _chat(capsys, *args, '--prompt', 'hi') == text_first, fmt
        assert _chat(capsys, *args, '--image', str(IMAGE), '--prompt', QUESTION, '--prompt', 'hi') == \
            image_then_text, fmt


def test_evaluate_chat_hook_answered_as_chat_does(run):
    """The run's log holds the hook's answers after training; they are the checkpoint's chat answers."""
    from mmllava.data.image import load_image
    from mmllava.engine import EvaluateChatHook

    log = next(run['work_dir'].glob('*/*.log')).read_text()
    block = log[log.index('EvaluateChatHook (after training):'):]
    logged = ast.literal_eval(re.search(r"\] 'What color is the shape\?' -> (.*)\n", block).group(1))
    model, session = _checkpoint_session(run, 16)
    assert logged and logged == session.ask(QUESTION, image=load_image(IMAGE)).strip()
    assert 'EvaluateChatHook (before training):' in log

    # without evaluation_images the hook asks text only, as a chat turn without an image
    hook = EvaluateChatHook(tokenizer=session.chat_model.tokenizer, evaluation_inputs=['hi'],
                            prompt_template=session.chat_model.template.name, max_new_tokens=16)
    session.reset()
    assert hook.answers(model) == [f"[no image] 'hi' -> {session.ask('hi').strip()!r}"]
