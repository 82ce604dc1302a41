"""emma_core.face.providers: onnxruntime providers are explicit, and a CUDA that cannot start says why."""
from __future__ import annotations

import logging

import pytest

from emma_core.face import FaceError, choose_providers
from emma_core.face import providers


def test_providers_are_explicit(monkeypatch, caplog):
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    auto = choose_providers("auto")
    assert auto[-1] == "CPUExecutionProvider" and auto in (
        ["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(FaceError, match="'auto', 'cuda' or 'cpu'"):
        choose_providers("gpu0")
    # CUDA advertised but failing to start: CPU, with a warning that says why
    monkeypatch.setattr(providers, "_cuda_probe", lambda: (False, "onnxruntime lists CUDAExecutionProvider but "
                                                                "could not start it (CUDA/cuDNN libraries missing)"))
    with caplog.at_level(logging.WARNING, logger="emma_core.face.providers"):
        assert choose_providers("auto") == ["CPUExecutionProvider"]
    assert "could not start" in caplog.text
    monkeypatch.setattr(providers, "_cuda_probe", lambda: (True, ""))
    assert choose_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cuda_probe_on_this_onnxruntime():
    import onnxruntime

    providers._cuda_probe.cache_clear()
    ok, reason = providers._cuda_probe()
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert not ok and "onnxruntime-gpu" in reason


# --- feature files --------------------------------------------------------------------------------------
