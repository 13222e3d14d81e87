"""The model the web demo and API server tests serve, and how to run a server as a subprocess.

``served_model`` is the one place that says which model that is: today a tiny LLaVA (LoRA
checkpoint with perturbed weights, exported in xtuner format), so the tests compare the page and the
API with ``mmllava chat``'s greedy answer. Point it at a fine-tuned model (return that model's
``MODEL [--llava DIR ...]`` arguments) and the same tests check the answers it gives.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from llava_checkpoints import FINETUNE, cfg_options, make_checkpoint

IMAGES = Path(__file__).resolve().parents[1] / 'data' / 'synthetic' / 'images'
# A two-turn conversation: (question, image) per turn.
CONVERSATION = [('What color is the shape?', IMAGES / 'eval_0000.png'), ('What shape is it?', IMAGES / 'eval_0001.png')]
MAX_NEW_TOKENS = 12


@pytest.fixture(scope='session')
def served_model(tiny_zoo, tmp_path_factory) -> list[str]:
    """``MODEL`` and model options, as ``mmllava chat`` / ``demo`` / ``serve`` take them."""
    import torch

    from mmllava.cli import main

    torch.manual_seed(0)  # the untrained weights (LoRA, projector) come from torch's RNG
    root = tmp_path_factory.mktemp('served_model')
    make_checkpoint(tiny_zoo, root / 'iter_5.pth', qlora=False, scale=0.02)
    assert main(['convert', 'pth_to_hf', FINETUNE, str(root / 'iter_5.pth'), str(root / 'export'), '--fp32',
                 '--save-format', 'xtuner', '--cfg-options', *cfg_options(tiny_zoo, qlora=False)]) == 0
    return [str(tiny_zoo['internlm2_chat']), '--visual-encoder', str(tiny_zoo['clip_vit']),
            '--llava', str(root / 'export'), '--prompt-template', 'internlm2_chat']


@pytest.fixture(scope='session')
def served_chat_model(served_model):
    """The served model loaded in this process (a ``ChatModel``), as ``mmllava chat`` loads it."""
    import argparse

    from mmllava.chat.arguments import add_model_arguments, load_model_from_args

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    return load_model_from_args(parser.parse_args(served_model))


@pytest.fixture(scope='session')
def greedy_answers(served_chat_model) -> list[str]:
    """``ChatSession``'s greedy answers (``MAX_NEW_TOKENS`` at most) to the turns of ``CONVERSATION``."""
    from mmllava.chat.session import ChatSession, GenerationSettings
    from mmllava.data.image import load_image

    session = ChatSession(served_chat_model, settings=GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, temperature=0))
    answers = [session.ask(question, image=load_image(image)) for question, image in CONVERSATION]
    assert all(answer.strip() for answer in answers)
    return answers


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@contextmanager
def running(verb: str, model_args: list[str], log: Path, ready_path: str, *options: str, timeout: float = 90):
    """Run ``mmllava VERB MODEL_ARGS --port P OPTIONS`` until the ``with`` ends; yields its base URL
    once ``ready_path`` answers 200. Fails with the process's output if it dies or is not ready."""
    with running_process(verb, model_args, log, ready_path, *options, timeout=timeout) as (url, _):
        yield url


@contextmanager
def running_process(verb: str, model_args: list[str], log: Path, ready_path: str, *options: str,
                    timeout: float = 90, launcher: tuple[str, ...] = ('-m', 'mmllava')):
    """:func:`running`, yielding ``(url, process)``; ``launcher``: what ``python`` runs (``-c SCRIPT``
    for a script that calls ``mmllava.cli.main(sys.argv[1:])``)."""
    port = free_port()
    url = f'http://127.0.0.1:{port}'
    with open(log, 'wb') as out:
        process = subprocess.Popen([sys.executable, *launcher, verb, *model_args, '--port', str(port), *options],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f'mmllava {verb} did not start:\n{log.read_text()[-3000:]}')
            try:
                with urllib.request.urlopen(url + ready_path, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def png_bytes(size: tuple[int, int], mode: str = 'RGB', **save) -> bytes:
    """A blank PNG: a few bytes to send, ``size`` once decoded (``save``: PIL's PNG options)."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new(mode, size).save(out, 'PNG', **save)
    return out.getvalue()


def png_url(size: tuple[int, int], mode: str = 'RGB', **save) -> str:
    """:func:`png_bytes` as a ``data:`` URL."""
    import base64

    return 'data:image/png;base64,' + base64.b64encode(png_bytes(size, mode, **save)).decode()


def get_json(url: str) -> dict:
    """GET ``url`` and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)
