"""Training hooks: what the user sees while a run goes.

- ``DatasetInfoHook``: one decoded training sample at the start, masked positions shown as
  ``[-100 x N]`` and images as ``<image x N>``, so a template/tokenizer mismatch that masks every
  label is visible before the run (and warned about).
- ``EvaluateChatHook``: answers ``evaluation_inputs`` x ``evaluation_images`` before training,
  every ``every_n_iters`` iterations and at the end, in the log.
- ``ThroughputHook``: adds non-padding tokens/s, peak RSS (CPU) and DeepSpeed's gradient norm to
  what mmengine's ``LoggerHook`` prints (loss, lr, time, ETA, CUDA memory).
"""
from __future__ import annotations

import resource
import time

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmllava.chat.loader import chat_model_for
from mmllava.chat.session import ChatSession, GenerationSettings
from mmllava.config import build
from mmllava.constants import IGNORE_INDEX
from mmllava.data.image import load_image
from mmllava.datatools.display import format_sample


def _unwrap(model):
    while is_model_wrapper(model):  # DDP, or mmengine's DeepSpeed engine wrapper (-> engine.module)
        model = model.module
    return model


class DatasetInfoHook(Hook):
    """Log the first ``num_samples`` training samples decoded (XTuner's ``DatasetInfoHook``)."""

    def __init__(self, tokenizer, num_samples: int = 1):
        self.tokenizer = build(tokenizer)
        self.num_samples = num_samples

    def before_train(self, runner) -> None:
        dataset = runner.train_dataloader.dataset
        runner.logger.info(f'training dataset: {len(dataset)} samples')
        if getattr(dataset, 'skip_report', None):
            runner.logger.warning(dataset.skip_report)
        for index in range(min(self.num_samples, len(dataset))):
            sample = dataset[index]
            runner.logger.info(f'training sample {index}: '
                               + format_sample(sample['input_ids'], sample['labels'], self.tokenizer))
            if all(label == IGNORE_INDEX for label in sample['labels']):
                runner.logger.warning(f'training sample {index} has no trained token: check prompt_template '
                                      'against the tokenizer, and max_length')


class EvaluateChatHook(Hook):
    """Answer ``evaluation_inputs`` for each of ``evaluation_images`` (or text only) with the model.

    Arguments follow XTuner's hook: ``tokenizer`` and ``image_processor`` are objects or
    ``dict(type=...)`` configs (the config's own: LLaVA's ``ImageProcessor`` or InternVL's tiling
    ``InternVLImageProcessor``); ``system`` empty or None
    means the template's default; ``every_n_iters`` None evaluates only before and after training.
    Every rank generates (ZeRO-3 needs all of them); rank 0 logs.
    """

    priority = 'LOW'  # after the optimizer step and the lr update of the iteration

    def __init__(self, tokenizer, evaluation_inputs, evaluation_images=None, image_processor=None,
                 system: str | None = None, prompt_template: str = 'plain', every_n_iters: int | None = None,
                 max_new_tokens: int = 600, generation_kwargs: dict | None = None):
        self.tokenizer = build(tokenizer)
        self.inputs = [evaluation_inputs] if isinstance(evaluation_inputs, str) else list(evaluation_inputs)
        images = [evaluation_images] if isinstance(evaluation_images, str) else list(evaluation_images or [])
        self.images = images or [None]
        self.image_processor = build(image_processor)
        if images and self.image_processor is None:
            raise ValueError('EvaluateChatHook: evaluation_images need an image_processor')
        self.system = system or None
        self.template = prompt_template
        self.every_n_iters = every_n_iters
        self.max_new_tokens = max_new_tokens
        self.generation_kwargs = dict(generation_kwargs or {})  # greedy unless these say otherwise
        self._evaluated_at = None  # iterations completed at the last evaluation

    def answers(self, model) -> list[str]:
        """One log line per (image, input): ``model`` answers through the prompt path of ``chat``,
        ``eval`` and ``serve`` (``ChatSession`` on a ``ChatModel``), LLaVA and InternVL alike; an
        input without an image is a text-only turn."""
        settings = GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=0, extra=self.generation_kwargs)
        session = ChatSession(chat_model_for(model, self.tokenizer, self.template, self.image_processor),
                              system=self.system, settings=settings)
        lines = []
        for image_path in self.images:
            image = None if image_path is None else load_image(image_path)
            for text in self.inputs:
                session.reset()
                answer = session.ask(text, image=image).strip()
                lines.append(f'[{image_path or "no image"}] {text!r} -> {answer!r}')
        return lines

    @torch.no_grad()
    def evaluate(self, runner, step: int, when: str) -> None:
        """Generate every answer and log them under ``when``; ``step`` = iterations completed."""
        model = _unwrap(runner.model)
        # Every module gets its own mode back (a part kept in eval on purpose stays so), after the
        # model's own train(), which also restores what training needs (mmllava.models: the 4-bit layout).
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        lines = [f'EvaluateChatHook ({when}):', *self.answers(model)]
        runner.logger.info('\n'.join(lines))
        model.train(modes[0][1])
        for module, training in modes:
            module.training = training
        self._evaluated_at = step

    def before_train(self, runner) -> None:
        self.evaluate(runner, runner.iter, 'before training')

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self.every_n_iters and self.every_n_train_iters(runner, self.every_n_iters):
            self.evaluate(runner, runner.iter + 1, f'iteration {runner.iter + 1}')

    def after_train(self, runner) -> None:
        if self._evaluated_at != runner.iter:
            self.evaluate(runner, runner.iter, 'after training')


def _non_padding_tokens(data_batch) -> int | None:
    data = data_batch.get('data', data_batch) if isinstance(data_batch, dict) else None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get('attention_mask'), torch.Tensor):
        return int(data['attention_mask'].sum())
    if isinstance(data.get('input_ids'), torch.Tensor):
        return data['input_ids'].numel()
    return None


class ThroughputHook(Hook):
    """Log ``tokens_per_sec`` (non-padding tokens, all ranks, per wall second of the iteration),
    ``rss_mb`` (peak resident memory, CPU runs) and ``grad_norm`` under DeepSpeed."""

    priority = 'NORMAL'  # before LoggerHook (BELOW_NORMAL) reads the scalars

    def __init__(self):
        self._start = None

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        now = time.perf_counter()
        elapsed, self._start = now - self._start, now
        hub = runner.message_hub
        tokens = _non_padding_tokens(data_batch)
        if tokens is not None and elapsed > 0:
            count = torch.tensor(float(tokens))
            if get_world_size() > 1:
                all_reduce(count)  # same collective on every rank: all have a batch each iteration
            hub.update_scalar('train/tokens_per_sec', float(count) / elapsed)
        if not torch.cuda.is_available():
            hub.update_scalar('train/rss_mb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        engine = getattr(runner.model, 'model', None)
        if hasattr(engine, 'get_global_grad_norm'):
            norm = engine.get_global_grad_norm()
            if norm is not None:
                hub.update_scalar('train/grad_norm', float(norm))

