#!/usr/bin/env bash
# torchvision beside the project (pip --target, no second torch), for the conformance tests that
# build transformers' InternVLProcessor: 4.52.4 and 5.x both need torchvision for its video
# processor, even for images. PyPI's torchvision is a CUDA build whose C++ ops do not load beside
# the CPU torch 2.13 wheel; tools/guard_torchvision.py makes it import without them.
# Usage: bash tools/install_torchvision.sh [TARGET]   (default .cache/torchvision)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target=${1:-"$here/../.cache/torchvision"}
if [ -f "$target/.complete" ]; then
    exit 0
fi
rm -rf "$target"
python -m pip install -q --disable-pip-version-check --no-deps --target "$target" torchvision==0.28.0
python "$here/guard_torchvision.py" "$target/torchvision"
touch "$target/.complete"
echo "torchvision 0.28.0 in $target"
