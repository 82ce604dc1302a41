"""Finish installing ComfyUI-EMMA's face dependencies with exactly ONE onnxruntime build.

ComfyUI-Manager (and `comfy node install`) run this after `pip install -r requirements.txt`; by hand:

    python -m pip install -r requirements.txt
    python install.py                 # keeps a working onnxruntime build you already have, else the CPU one
    python install.py --gpu           # CUDA users: onnxruntime-gpu as the only build
    python install.py --cpu           # force the CPU build (e.g. after a broken CUDA set-up)
    python install.py --check         # report only, change nothing

Run it with the Python that runs ComfyUI (portable Windows build: python_embeded\\python.exe install.py).

Why a script: insightface 2.x hard-requires the package `onnxruntime` (the CPU build). onnxruntime-gpu,
-directml, -openvino, ... install into the SAME `onnxruntime/` folder, so a plain `pip install insightface`
next to onnxruntime-gpu overwrites one build with the other, and uninstalling either breaks `import
onnxruntime`. So requirements.txt names insightface's other dependencies only; this script installs
insightface with --no-deps, repairs a doubled install, and installs onnxruntime (CPU) only if no build is
there. torch, torchvision and torchaudio are pinned to what is installed for every pip call here.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from importlib import metadata

# Every distribution that provides the `onnxruntime` import package.
ORT_BUILDS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
              "onnxruntime-silicon", "onnxruntime-rocm", "onnxruntime-qnn", "onnxruntime-training")
CPU_BUILD = "onnxruntime"
GPU_BUILD = "onnxruntime-gpu"
# Every distribution that provides `cv2` (same one-folder problem as onnxruntime).
CV2_BUILDS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
              "opencv-contrib-python-headless")
CV2_DEFAULT = "opencv-python-headless"
INSIGHTFACE = "insightface>=2.1,<3"  # 2.x: a pure-Python wheel, no compiler needed
PINNED = ("torch", "torchvision", "torchaudio")

# Runs in a fresh interpreter: after pip changed files, this process may hold stale modules.
PROBE = r"""
import sys
import numpy as np
import onnx
from onnx import TensorProto, helper
import onnxruntime as ort
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
out = sess.run(None, {"x": np.array([[-1.0, 0.0, 2.0]], dtype=np.float32)})[0]
assert out.tolist() == [[0.0, 0.0, 2.0]], out
print(ort.__version__, ",".join(ort.get_available_providers()))
"""


def log(msg: str) -> None:
    print(f"[ComfyUI-EMMA install] {msg}", flush=True)


def dist_name(dist) -> str:
    return (dist.metadata["Name"] or "").lower().replace("_", "-")


def installed(names) -> dict[str, str]:
    """{distribution name: version} for the installed distributions among `names`."""
    wanted = {n.lower() for n in names}
    found = {}
    for dist in metadata.distributions():
        name = dist_name(dist)
        if name in wanted:
            found[name] = dist.version
    return found


def probe_onnxruntime() -> tuple[bool, str]:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    if proc.returncode == 0:
        return True, proc.stdout.strip()
    return False, (proc.stderr.strip().splitlines() or ["(no output)"])[-1]


def pip(*args: str) -> None:
    """`python -m pip ...` with torch & co. pinned to the installed versions."""
    pins = [f"{name}=={version}" for name, version in installed(PINNED).items()]
    cmd = [sys.executable, "-m", "pip", *args]
    constraint = None
    if pins and args and args[0] == "install":
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("\n".join(pins) + "\n")
            constraint = f.name
        cmd += ["-c", constraint]
    log("$ " + " ".join(cmd))
    try:
        subprocess.check_call(cmd)
    finally:
        if constraint:
            os.unlink(constraint)


def choose_build(present: dict[str, str], prefer: str | None) -> str:
    """The one onnxruntime distribution that should remain."""
    if prefer == "gpu":
        return GPU_BUILD
    if prefer == "cpu":
        return CPU_BUILD
    accelerated = [n for n in ORT_BUILDS if n in present and n != CPU_BUILD]
    if accelerated:  # installed on purpose; the CPU build next to it came from insightface's metadata
        return accelerated[0]
    return CPU_BUILD


def ensure_onnxruntime(prefer: str | None, check_only: bool) -> bool:
    present = installed(ORT_BUILDS)
    target = choose_build(present, prefer)
    ok, info = probe_onnxruntime() if present else (False, "not installed")
    log(f"onnxruntime builds installed: {present or 'none'}; import + CPU session: {'ok ' + info if ok else info}")
    if list(present) == [target] and ok:
        log(f"keeping {target} {present[target]}")
        return True
    if check_only:
        log(f"would leave exactly one build: {target}")
        return False
    others = [n for n in present if n != target]
    if others:
        pip("uninstall", "-y", *others)
    # Reinstall the target over a folder the others shared (their uninstall removed common files).
    spec = f"{target}=={present[target]}" if target in present else target
    pip("install", "--force-reinstall", "--no-deps", spec)
    pip("install", spec)  # its own dependencies (numpy, protobuf, flatbuffers, ...), torch pinned
    ok, info = probe_onnxruntime()
    after = installed(ORT_BUILDS)
    log(f"now: {after}; import + CPU session: {'ok ' + info if ok else info}")
    return ok and list(after) == [target]


def ensure_cv2(check_only: bool) -> None:
    present = installed(CV2_BUILDS)
    if present:
        if len(present) > 1:
            log(f"WARNING: several OpenCV builds share the cv2 folder: {present}. Keep one: "
                f"pip uninstall {' '.join(present)} && pip install {CV2_DEFAULT}")
        return
    if not check_only:
        pip("install", CV2_DEFAULT)


def ensure_insightface(check_only: bool) -> None:
    have = installed(["insightface"]).get("insightface")
    if have and int(have.split(".")[0]) >= 2:
        log(f"insightface {have} present")
        return
    if not check_only:
        # --no-deps: its metadata requires `onnxruntime` by name, which would add a second build.
        pip("install", "--no-deps", "--upgrade", INSIGHTFACE)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--gpu", action="store_const", const="gpu", dest="prefer",
                       help="install onnxruntime-gpu (CUDA) as the only onnxruntime build")
    group.add_argument("--cpu", action="store_const", const="cpu", dest="prefer",
                       help="install the CPU onnxruntime as the only build")
    parser.add_argument("--check", action="store_true", help="report only; install nothing")
    args = parser.parse_args(argv)
    prefer = args.prefer or (os.environ.get("EMMA_ONNXRUNTIME") or "").lower() or None
    if prefer not in (None, "cpu", "gpu"):
        parser.error("EMMA_ONNXRUNTIME must be cpu or gpu")
    ensure_cv2(args.check)
    ensure_insightface(args.check)
    ok = ensure_onnxruntime(prefer, args.check)
    if ok:
        log("face features ready (EMMA Face Features picks CUDA when onnxruntime-gpu can use it, else CPU)")
        return 0
    log("onnxruntime is NOT usable: see README, Troubleshooting > onnxruntime")
    return 1


if __name__ == "__main__":
    sys.exit(main())
