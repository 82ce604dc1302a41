"""onnxruntime providers for face analysis, always explicit: CUDA only when a probe session really runs on it.

"auto" falls back to the CPU with a log line that gives the reason (the CPU build is installed, or CUDA /
cuDNN do not match this onnxruntime-gpu); "cuda" says so as a warning.
"""
from __future__ import annotations

import contextlib
import logging
from functools import lru_cache

import numpy as np

from .pack import FaceError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@lru_cache(maxsize=1)
def _cuda_probe() -> tuple[bool, str]:
    """(True, "") when a tiny session really runs on CUDA, else (False, the reason). Cached per process."""
    try:
        import onnxruntime as ort
    except Exception as error:  # noqa: BLE001 - any import failure means "no CUDA" here
        return False, f"onnxruntime cannot be imported ({error})"
    available = list(ort.get_available_providers())
    if CUDA not in available:
        return False, (f"this onnxruntime build offers {available} (the CPU package 'onnxruntime'; for the GPU "
                       "install 'onnxruntime-gpu' INSTEAD of it - never both)")
    try:
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "x"], ["y"])], "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        preload = getattr(ort, "preload_dlls", None)  # finds pip-installed CUDA/cuDNN (ORT >= 1.21)
        if callable(preload):
            with contextlib.suppress(Exception):
                preload()
        session = ort.InferenceSession(model.SerializeToString(), providers=[CUDA, CPU])
        if CUDA not in session.get_providers():
            return False, ("onnxruntime lists CUDAExecutionProvider but could not start it (CUDA/cuDNN "
                           "libraries missing or of the wrong version for this onnxruntime-gpu)")
        out = session.run(None, {"x": np.ones((1, 4), np.float32)})[0]
        if not np.allclose(out, 2.0):
            return False, "a CUDA probe session returned wrong values"
    except Exception as error:  # noqa: BLE001 - any failure means fall back to CPU
        return False, f"a CUDA probe session failed: {type(error).__name__}: {error}"
    return True, ""


def choose_providers(preferred: str = "auto") -> list[str]:
    """Explicit onnxruntime providers: ["CUDAExecutionProvider", "CPUExecutionProvider"] only when CUDA really
    runs, else ["CPUExecutionProvider"]. preferred: "auto", "cuda" or "cpu"."""
    choice = str(preferred).strip().lower()
    if choice not in ("auto", "cuda", "cpu"):
        raise FaceError(f"unknown onnxruntime provider choice {preferred!r}: use 'auto', 'cuda' or 'cpu'")
    if choice == "cpu":
        return [CPU]
    ok, reason = _cuda_probe()
    if ok:
        return [CUDA, CPU]
    if choice == "cuda" or "could not start" in reason or "probe" in reason:
        log.warning("face analysis runs on the CPU: %s", reason)
    else:
        log.info("face analysis runs on the CPU: %s", reason)
    return [CPU]
