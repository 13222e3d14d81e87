#!/usr/bin/env bash
# transformers 4.52.4 (the version many serving stacks still run) beside the project, for the
# foreign-artifact conformance tests: installed with `pip install --target` into a cache folder and
# used from a subprocess with PYTHONPATH, on top of this venv's torch, numpy and safetensors.
# Usage: bash tools/install_transformers4.sh [TARGET]   (default .cache/transformers4)
set -euo pipefail
target=${1:-"$(cd "$(dirname "$0")/.." && pwd)/.cache/transformers4"}
if [ -f "$target/.complete" ]; then
    exit 0
fi
rm -rf "$target"
# --no-deps: only the packages whose versions differ from ours, plus requests (4.x's hub client
# needs it); everything else (torch, numpy, safetensors, regex, pyyaml, tqdm) comes from the venv.
python -m pip install -q --disable-pip-version-check --no-deps --target "$target" \
    transformers==4.52.4 'tokenizers>=0.21,<0.22' 'huggingface-hub>=0.30,<1.0' \
    requests 'urllib3<3' 'idna' 'charset-normalizer' 'certifi'
touch "$target/.complete"
echo "transformers 4.52.4 in $target"
