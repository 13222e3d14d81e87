# Sourced by tools/quickstart.sh and tools/test.sh: create or reuse the venv and install what is
# missing, so that each of them alone sets up a fresh machine; a second run finds everything in
# place and costs a few seconds.
#   mmllava_setup EXTRAS    EXTRAS: '' (the package) or 'test' (the package and its test extras)
# The venv is $MMLLAVA_VENV, default .venv in the repository (MMLLAVA_VENV=$VIRTUAL_ENV uses yours).

mmllava_setup() {
    local extras=$1 repo venv key
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    venv=${MMLLAVA_VENV:-$repo/.venv}
    if [ ! -x "$venv/bin/python" ]; then
        echo "setup: creating the venv $venv"
        python3 -m venv "$venv" || {
            echo "setup: python3 -m venv failed (Debian/Ubuntu: apt-get install python3-venv)" >&2; return 1; }
    fi
    # shellcheck disable=SC1091
    . "$venv/bin/activate"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
    # What is installed is keyed by the dependencies it came from: a changed pyproject.toml installs again.
    key=$(sha1sum "$repo/pyproject.toml" | cut -c1-12)
    if [ -f "$venv/.mmllava-$extras-$key" ] || { [ -z "$extras" ] && [ -f "$venv/.mmllava-test-$key" ]; }; then
        return 0
    fi
    echo "setup: installing torch 2.13.0 (CPU) and mmllava${extras:+[$extras]} into $venv (a few minutes, once)"
    # torch first and pinned: the CPU build (an unpinned torch would pull a CUDA build of several GB).
    pip install -q torch==2.13.0 || return 1
    pip install -q -e "$repo${extras:+[$extras]}" || return 1
    touch "$venv/.mmllava-$extras-$key"
}
