"""Count what training really holds, for checking the plan's prediction (tests, CPU).

Not RSS: the bytes of the tensors themselves, each storage counted once.

- parameters: every parameter and buffer of the model (bitsandbytes' NF4 storage and its
  quantisation state: absmax, nested absmax and code included);
- gradients: the ``.grad`` of the trained parameters after one backward pass;
- optimizer states: every tensor in ``optimizer.state`` after one step;
- activations: every tensor autograd saves for backward during one forward pass
  (``torch.autograd.graph.saved_tensors_hooks``), deduplicated by storage, storages of
  parameters and buffers excluded (a frozen weight saved by ``linear`` is not an activation).
"""
from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass

import torch
import torch.utils.checkpoint as ckpt
from torch import nn


@dataclass
class MeasuredMemory:
    """Bytes held by one training step (see the module docstring for what each counts)."""

    parameters: int
    gradients: int
    optimizer_states: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_states + self.activations


def _storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _quant_state_tensors(param) -> list[torch.Tensor]:
    """The tensors of a bitsandbytes ``Params4bit`` quantisation state (absmax, code, offset, nested ones)."""
    state = getattr(param, 'quant_state', None)
    out = []
    while state is not None:
        out += [t for t in (getattr(state, name, None) for name in ('absmax', 'code', 'offset'))
                if isinstance(t, torch.Tensor)]
        state = getattr(state, 'state2', None)
    return out


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of every parameter, buffer and NF4 quantisation state, each storage once."""
    seen = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        for t in [tensor, *_quant_state_tensors(tensor)]:
            seen[_storage_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of the parameters' ``.grad`` tensors."""
    return sum(p.grad.untyped_storage().nbytes() for p in model.parameters() if p.grad is not None)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's per-parameter state (AdamW: ``exp_avg``, ``exp_avg_sq``; step counters too)."""
    seen = {}
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                seen[_storage_key(value)] = value.untyped_storage().nbytes()
    return sum(seen.values())


class SavedActivations:
    """Context manager: the storages autograd saves for backward while it is active, minus ``exclude``'s."""

    def __init__(self, exclude: nn.Module):
        self._exclude = {_storage_key(t) for t in [*exclude.parameters(), *exclude.buffers()]
                         for t in [t, *_quant_state_tensors(t)]}
        self.storages: dict[tuple[int, int], weakref.ref] = {}

    def _record(self, tensor: torch.Tensor) -> None:
        key = _storage_key(tensor)
        if key not in self._exclude and tensor.device.type != 'meta':
            # A weak reference: a graph freed during the forward pass frees its tensors, which then
            # no longer count; a reused address overwrites a dead entry.
            self.storages[key] = weakref.ref(tensor)

    def _pack(self, tensor: torch.Tensor):
        # Saved as a detached alias (same storage): the tensor itself would tie a saved output to its
        # own grad_fn in a reference cycle that keeps dead graphs alive. The alias lives exactly as
        # long as autograd holds it.
        alias = tensor.detach()
        self._record(alias)
        return alias

    def alive(self) -> list[torch.Tensor]:
        """The saved tensors still held (by the autograd graph, once the forward pass has returned)."""
        gc.collect()
        return [t for t in (ref() for ref in self.storages.values()) if t is not None]

    @property
    def bytes(self) -> int:
        """Bytes of the saved storages still held."""
        return sum(t.untyped_storage().nbytes() for t in self.alive())

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        # Non-reentrant activation checkpointing keeps its region's inputs in a closure for the
        # recomputation, out of sight of the hooks: count them where the region starts.
        self._generator = ckpt._checkpoint_without_reentrant_generator

        def generator(fn, *args, **kwargs):  # (fn, preserve, context_fn, ..., *inputs, **inputs)
            # transformers binds a layer's keyword inputs (mask, RoPE cos/sin) in a functools.partial
            bound = [*getattr(fn, 'args', ()), *getattr(fn, 'keywords', {}).values()]
            for value in [*args, *kwargs.values(), *bound]:
                for tensor in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(tensor, torch.Tensor):
                        self._record(tensor)
            return self._generator(fn, *args, **kwargs)

        ckpt._checkpoint_without_reentrant_generator = generator
        return self

    def __exit__(self, *exc):
        ckpt._checkpoint_without_reentrant_generator = self._generator
        self._hooks.__exit__(*exc)


def measure_step(model: nn.Module, optimizer: torch.optim.Optimizer, data: dict) -> MeasuredMemory:
    """One real training step of ``model`` on the ``llava_collate`` batch ``data``: forward under
    the saved-tensor hooks, backward, optimizer step; returns what it held."""
    model.train()
    with SavedActivations(model) as saved:
        loss = model(data, mode='loss')['loss']
    activations = saved.bytes
    loss.backward()
    gradients = gradient_bytes(model)
    optimizer.step()
    return MeasuredMemory(parameter_bytes(model), gradients, optimizer_state_bytes(optimizer), activations)
