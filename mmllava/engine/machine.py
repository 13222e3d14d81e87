"""The machine a run computes on: CPU model, the ISA features that change kernels (and so numerics
and speed), the versions of the libraries that pick those kernels, and the thread count.

A result that differs between two machines is matched to its kind with these facts: bitsandbytes
takes another 4-bit path on AVX512-BF16 CPUs, oneDNN uses AMX or AVX512-BF16 for bf16 products,
and the SIMD width (AVX2 / AVX-512) and the thread count change the order of every fp32 sum.
Recorded by the training log (``build_runner``) and ``mmllava bench``.
"""
from __future__ import annotations

import os
import platform
from importlib import metadata

import torch

# /proc/cpuinfo flag -> the name the log prints, in that order
ISA_FEATURES = {'avx2': 'AVX2', 'avx512f': 'AVX-512', 'avx512_bf16': 'AVX512-BF16', 'amx_tile': 'AMX'}
LIBRARIES = ('torch', 'transformers', 'bitsandbytes', 'deepspeed')


def parse_cpuinfo(text: str) -> tuple[str | None, set[str]]:
    """``(model name, flags)`` of the first processor in a Linux ``/proc/cpuinfo`` text."""
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(':')
        key = key.strip()
        if key == 'model name' and model is None:
            model = value.strip()
        elif key == 'flags' and flags is None:
            flags = set(value.split())
    return model, flags or set()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_facts(cpuinfo_path: str = '/proc/cpuinfo') -> dict:
    """CPU model, ``isa`` (feature -> bool, None where the CPU's flags cannot be read), torch's CPU
    capability (the kernels it dispatches to), library versions (None: not installed), torch threads,
    CPU count and the CUDA device (None on a CPU run)."""
    try:
        with open(cpuinfo_path, encoding='utf-8', errors='replace') as f:
            model, flags = parse_cpuinfo(f.read())
    except OSError:  # not Linux
        model, flags = None, None
    return {
        'cpu': model or platform.processor() or platform.machine(),
        'isa': {name: (flag in flags) if flags else None for flag, name in ISA_FEATURES.items()},
        'torch_cpu_capability': torch.backends.cpu.get_cpu_capability(),
        'versions': {package: _version(package) for package in LIBRARIES},
        'torch_threads': torch.get_num_threads(),
        'cpu_count': os.cpu_count(),
        'cuda': torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def format_machine_facts(facts: dict) -> str:
    """One line: ``machine: CPU; AVX2 yes, AVX-512 no, ...; torch 2.x (CPU kernels AVX2), ...;
    N torch threads on M CPUs``."""
    isa = ', '.join(f'{name} {"unknown" if has is None else "yes" if has else "no"}'
                    for name, has in facts['isa'].items())
    versions = []
    for package, version in facts['versions'].items():
        kernels = f' (CPU kernels {facts["torch_cpu_capability"]})' if package == 'torch' else ''
        versions.append(f'{package} {version or "not installed"}{kernels}')
    cuda = f'; CUDA {facts["cuda"]}' if facts.get('cuda') else ''
    return (f'machine: {facts["cpu"]}; {isa}; {", ".join(versions)}; {facts["torch_threads"]} torch threads '
            f'on {facts["cpu_count"]} CPUs{cuda}')
