#!/usr/bin/env bash
# Set up (or reuse) the environments, then run the tests from the repo root, on two ComfyUI hosts (lanes):
#   default   the whole suite, on ComfyUI 0.3.75 (frontend 1.32.9) in .venv
#   comfy033  the host-facing tests (nodes in-process, workflows and templates on the server, the browser;
#             marker `comfy_facing`) on ComfyUI 0.33.0 with its own frontend (1.48.7), the browser test also in
#             frontend 1.58.1, in .cache/venv-comfy033 (torch 2.11)
#
#   scripts/test.sh [--lane default|comfy033|all] [pytest args...]      (default: all; CI runs exactly this)
#   e.g. scripts/test.sh tests/devtools -x;  scripts/test.sh -m "not slow";  scripts/test.sh --lane comfy033
#
# The pytest arguments go to every lane; the comfy033 lane keeps only the host-facing tests among them (when
# arguments select none of those, that lane has nothing to run and says so). A lane that cannot be set up or
# whose pytest fails makes the whole run fail; both lanes run either way.
set -euo pipefail
cd "$(dirname "$0")/.."

lane=all
if [ "${1:-}" = --lane ]; then
    lane="${2:?--lane needs default, comfy033 or all}"
    shift 2
fi
case "$lane" in default|comfy033|all) ;; *) echo "test.sh: unknown lane $lane" >&2; exit 2 ;; esac

LOGS=.cache/logs
mkdir -p "$LOGS"
totals=(0 0 0 0)  # passed failed skipped errors, over the lanes

# run_pytest LANE PYTHON [args]: pytest, its output also kept in .cache/logs/pytest-LANE.log; pytest's exit code.
run_pytest() {
    local name="$1" py="$2"
    shift 2
    "$py" -m pytest -q "$@" 2>&1 | tee "$LOGS/pytest-$name.log"
    return "${PIPESTATUS[0]}"
}

# closing_line LANE: sets $closing to pytest's last line for that lane; adds its counts to the totals.
closing_line() {
    local line i word n
    line="$(grep -E "[0-9]+ (passed|failed|error)|no tests ran" "$LOGS/pytest-$1.log" | tail -1 | tr -d '=' | sed 's/^ *//')"
    i=0
    for word in passed failed skipped error; do
        n="$(grep -oE "[0-9]+ $word" <<<"$line" | grep -oE "^[0-9]+" || true)"
        totals[i]=$(( totals[i] + ${n:-0} ))
        i=$((i + 1))
    done
    closing="${line:-no pytest summary line}"
}

# disk_free: what is left on the disks the suite writes to (the repo's .cache and the temp folder); a full
# disk once failed a CI run half-way, so every summary line says how much room the lane left.
disk_free() {
    echo "$(df -Ph . | awk 'NR==2 {print $4}') free here, $(df -Ph "${TMPDIR:-/tmp}" | awk 'NR==2 {print $4}') in ${TMPDIR:-/tmp}"
}

echo "test.sh: before setup: $(disk_free)"
t_setup=$SECONDS
bash scripts/setup_env.sh --lane "$lane"
summary=("setup: $((SECONDS - t_setup)) s; $(disk_free)")
status=0

if [ "$lane" = default ] || [ "$lane" = all ]; then
    t0=$SECONDS
    rc=0
    run_pytest default .venv/bin/python "$@" || rc=$?
    closing_line default
    summary+=("lane default (ComfyUI 0.3.75): $closing [exit $rc, $((SECONDS - t0)) s]; after it: $(disk_free)")
    if [ "$rc" != 0 ]; then status=1; fi
fi

if [ "$lane" = comfy033 ] || [ "$lane" = all ]; then
    comfy033="$(.cache/venv-comfy033/bin/python -m devtools.host provision --tree 0.33.0)"
    t0=$SECONDS
    rc=0
    EMMA_LANE=comfy033 EMMA_COMFYUI_DIR="$comfy033" EMMA_EXPECT_COMFYUI_VERSION=0.33.0 EMMA_FRONTENDS=1.58.1 \
        run_pytest comfy033 .cache/venv-comfy033/bin/python "$@" || rc=$?
    if [ "$rc" = 5 ] && [ "$#" -gt 0 ]; then
        # pytest's "no tests ran": the arguments selected no host-facing test; without arguments it fails.
        summary+=("lane comfy033 (ComfyUI 0.33.0): the arguments select no host-facing test")
    else
        closing_line comfy033
        summary+=("lane comfy033 (ComfyUI 0.33.0): $closing [exit $rc, $((SECONDS - t0)) s]; after it: $(disk_free)")
        if [ "$rc" != 0 ]; then status=1; fi
    fi
fi

echo
printf 'test.sh: %s\n' "${summary[@]}"
echo "test.sh: all lanes together took $SECONDS s"
echo "total: ${totals[0]} passed, $(( totals[1] + totals[3] )) failed, ${totals[2]} skipped"
exit "$status"
