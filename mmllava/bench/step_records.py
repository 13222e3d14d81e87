"""What a benchmark records per step, and how it turns the steady-state steps into one summary."""
from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

_STATUS = Path('/proc/self/status')
_CLEAR_REFS = Path('/proc/self/clear_refs')


def batch_counts(data_batch: dict) -> tuple[int, int, int]:
    """(samples, real tokens, token positions) of a ``llava_collate`` batch, padding excluded.

    Packed rows (``position_ids``) count one sample per position 0 that is not padding.
    """
    data = data_batch['data']
    mask = data['attention_mask'].bool()
    if data.get('position_ids') is not None:
        samples = int(((data['position_ids'] == 0) & mask).sum())
    else:
        samples = mask.shape[0]
    return samples, int(mask.sum()), mask.numel()


def reset_peak_memory() -> None:
    """Start a new peak: CUDA's max-allocated counter, and Linux' peak RSS (``VmHWM``) where the
    kernel lets a process reset it; elsewhere the CPU peak stays the process's lifetime peak."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        _CLEAR_REFS.write_text('5')
    except OSError:
        pass


def peak_memory_mb() -> dict[str, float]:
    """``cpu_rss_mb``: peak resident memory since ``reset_peak_memory``; ``cuda_max_allocated_mb``."""
    peak = {'cpu_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith('VmHWM:'):
                peak['cpu_rss_mb'] = int(line.split()[1]) / 1024
    except OSError:
        pass
    if torch.cuda.is_available():
        peak['cuda_max_allocated_mb'] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def current_rss_mb() -> float | None:
    """Resident memory now (Linux ``VmRSS``), None where ``/proc`` cannot tell."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# Dense bf16/fp16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name part.
_PEAK_TFLOPS = (('H200', 989.4), ('H100 PCIe', 756.0), ('H100', 989.4), ('A100', 312.0), ('L40S', 362.0),
                ('A10G', 125.0), ('L4', 121.0), ('4090', 165.2), ('V100', 125.0))


def peak_tflops() -> float | None:
    """The current CUDA device's dense half-precision peak, ``MMLLAVA_PEAK_TFLOPS`` if set (any
    device, a CPU too), else None when the device is not in the table."""
    if os.environ.get('MMLLAVA_PEAK_TFLOPS'):
        return float(os.environ['MMLLAVA_PEAK_TFLOPS'])
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for part, peak in _PEAK_TFLOPS if part in name), None)


def sync() -> None:
    """Wait for queued device work, so a step's time is its own (CPU: nothing to wait for)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class StepRecorder:
    """Timestamps and counts of each step: ``batch_ready`` when the batch is in hand, ``step_done``
    after the optimizer step. A step's time runs from the previous ``step_done`` (data loading
    included); its data wait is the part before ``batch_ready``."""

    warmup: int
    step_times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    data_waits: list[float] = field(default_factory=list)
    counts: list[tuple[int, int, int]] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)
    flops_per_real_token: float | None = None
    _last_done: float | None = None
    _last_cpu: float | None = None
    _ready: float | None = None

    def start(self) -> None:
        """Mark the moment the loop asks for its first batch."""
        self._last_done = time.perf_counter()
        self._last_cpu = time.process_time()

    def batch_ready(self, data_batch: dict) -> None:
        self._ready = time.perf_counter()
        self.counts.append(batch_counts(data_batch))

    def flops_counted(self, flops: int, real_tokens: int) -> None:
        """The FLOPs one (warm-up) step executed, carrying ``real_tokens`` tokens."""
        self.flops_per_real_token = flops / max(real_tokens, 1)

    def step_done(self, loss: torch.Tensor | None = None) -> None:
        """The step is over; ``loss`` is kept as a tensor (reading it would sync a device)."""
        sync()
        if loss is not None:
            self.losses.append(loss.detach())
        now, cpu = time.perf_counter(), time.process_time()
        self.step_times.append(now - self._last_done)
        self.cpu_times.append(cpu - self._last_cpu)
        self.data_waits.append(self._ready - self._last_done)
        self._last_done, self._last_cpu = now, cpu
        if len(self.step_times) == self.warmup:
            reset_peak_memory()  # the peak of the steady state, not of the first (allocating) steps

    def summary(self) -> dict[str, float]:
        """Steady-state figures over the steps after ``warmup``: median and fastest step time, the
        process's CPU seconds per step (all threads; less sensitive than wall time to other load
        on a shared machine), throughput over the whole steady span, data wait, peak memory, and
        ``losses``: every step's loss, warm-up included."""
        times, waits = self.step_times[self.warmup:], self.data_waits[self.warmup:]
        counts = self.counts[self.warmup:]
        if not times:
            raise ValueError('no steady-state step was recorded')
        span = sum(times)
        samples, real, positions = (sum(c[i] for c in counts) for i in range(3))
        return {
            'steps': len(times),
            'sec_per_step': statistics.median(times),
            'sec_per_step_min': min(times),
            'cpu_sec_per_step': statistics.median(self.cpu_times[self.warmup:]),
            'samples_per_sec': samples / span,
            'samples_per_step': samples / len(times),
            'real_tokens_per_sec': real / span,
            'real_tokens_per_step': real / len(times),
            'padding_fraction': 1 - real / positions,
            'data_wait_sec_per_step': statistics.median(waits),
            'data_wait_fraction': sum(waits) / span,
            **peak_memory_mb(),
            'losses': [float(loss) for loss in self.losses],
            **self._flops(real / span),
        }

    def _flops(self, real_tokens_per_sec: float) -> dict[str, float]:
        """Executed TFLOP/s (FLOPs counted in a warm-up step, per real token, times the steady
        real tokens/s) and, against the device's dense half-precision peak where known, the
        hardware FLOPs utilisation (``hfu``; equal to MFU when nothing is recomputed)."""
        if self.flops_per_real_token is None:
            return {}
        tflops = self.flops_per_real_token * real_tokens_per_sec / 1e12
        figures = {'flops_per_real_token': self.flops_per_real_token, 'tflops_per_sec': tflops}
        peak = peak_tflops()
        if peak:
            figures['hfu'] = tflops / peak
        return figures
