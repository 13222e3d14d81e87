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

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRANSFORMERS4 = Path(os.environ.get('MMLLAVA_TRANSFORMERS4', ROOT / '.cache' / 'transformers4'))


@pytest.fixture(scope='session')
def transformers4() -> Path:
    """The folder holding transformers 4.52.4; installed on first use (PyPI), never skipped."""
    if not (TRANSFORMERS4 / '.complete').is_file():
        result = subprocess.run(['bash', str(ROOT / 'tools' / 'install_transformers4.sh'), str(TRANSFORMERS4)],
                                capture_output=True, text=True)
        assert result.returncode == 0, f'installing transformers 4.52.4 failed:\n{result.stderr[-3000:]}'
    return TRANSFORMERS4


def run_python(code: str, *args: str, pythonpath: Path | None = None, timeout: float = 600) -> object:
    """Run ``code`` (with ``sys.argv[1:] == args``) in a fresh interpreter and return the JSON value
    printed on its last stdout line; fails the test with the script's stderr when it exits non-zero.
    ``pythonpath`` goes first on ``PYTHONPATH`` (e.g. the ``transformers4`` folder)."""
    env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', TOKENIZERS_PARALLELISM='false')
    if pythonpath is not None:
        env['PYTHONPATH'] = os.pathsep.join([str(pythonpath), env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
    result = subprocess.run([sys.executable, '-c', code, *map(str, args)], capture_output=True, text=True,
                            env=env, timeout=timeout)
    assert result.returncode == 0, f'foreign process failed (exit {result.returncode}):\n{result.stderr[-4000:]}'
    lines = result.stdout.strip().splitlines()
    assert lines, f'foreign process printed nothing:\n{result.stderr[-2000:]}'
    return json.loads(lines[-1])
