#!/usr/bin/env bash
# The test suite on a fresh machine or an existing one: sets up what is missing, then runs pytest.
#   bash tools/test.sh [PYTEST ARGS]      (default: the whole suite, tests/)
# Set-up (each step skipped when already done): the venv with torch 2.13.0 (CPU) and mmllava[test]
# (tools/setup_env.sh); transformers 4.52.4 beside it for the conformance tests
# (tools/install_transformers4.sh) and torchvision (tools/install_torchvision.sh); vLLM in its own
# venv (tools/install_vllm.sh); Debian's
# chromium and chromium-driver for the web demo's browser test (test tools never download a browser).
set -euo pipefail
cd "$(dirname "$0")/.."

. tools/setup_env.sh
mmllava_setup test
bash tools/install_transformers4.sh
bash tools/install_torchvision.sh   # transformers' InternVLProcessor needs it, in 4.52 and 5.x
bash tools/install_vllm.sh
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "setup: installing Debian's chromium and chromium-driver (apt-get)"
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; } \
        || echo "setup: could not install chromium: the browser test will be skipped (it fails under CI)" >&2
fi

# pytest exits 5 when no test ran: that fails this script too.
python -m pytest -q "${@:-tests}"
