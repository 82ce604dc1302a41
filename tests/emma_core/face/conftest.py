"""Fixtures of the face tests: the generated insightface packs (devtools.face_packs, the released layout)."""
from pathlib import Path

import pytest

from devtools import face_packs

PACKS_ROOT = Path(__file__).resolve().parents[3] / ".cache" / "test-models" / "insightface"


@pytest.fixture(scope="module")
def packs_root() -> Path:
    return face_packs.ensure_face_packs(PACKS_ROOT)
