"""Face analysis: insightface ArcFace 512-d normed embeddings (antelopev2 / buffalo_l) on a checked pack.

    analyzer = FaceAnalyzer(root="models/insightface", name="antelopev2")     # checks the folder first
    face = analyzer.analyze(rgb_uint8)                  # largest face; index=i picks left-to-right
    ref = embed_faces([img1, img2], analyzer)           # mean of normed embeddings, re-normalised
    crop = aligned_crop(rgb_uint8, face, size=224)      # ArcFace-aligned crop for portrait features

insightface is handed the absolute pack folder (pack.check_pack), so it never tries to download and never
raises its bare AssertionError. torch is imported only where a torch tensor is handed in or asked for.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .pack import KNOWN_PACKS, FaceError, check_pack, onnx_files
from .providers import CUDA, choose_providers

EMBED_DIM = 512
DEFAULT_DET_SIZE = (640, 640)
DEFAULT_DET_THRESH = 0.5


def encoder_name(pack: str) -> str:
    """What made a face identity, as features and EMMA module files record it."""
    return f"InsightFace {pack} ArcFace"


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face, in the analysed image's pixel coordinates."""

    bbox: np.ndarray       # (4,) float32 x1, y1, x2, y2
    kps: np.ndarray        # (5, 2) float32: eyes, nose, mouth corners
    det_score: float
    embedding: np.ndarray  # (512,) float32, L2-normalised (insightface's normed_embedding)

    @property
    def area(self) -> float:
        return float(max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1]))

    @property
    def center_x(self) -> float:
        return float(self.bbox[0] + self.bbox[2]) / 2.0


@dataclass(eq=False)
class FaceEmbedding:
    """Identity features of one or more reference images: `embedding` = normalised mean of `embeddings`."""

    embedding: np.ndarray                  # (512,) float32, unit norm
    count: int                             # number of reference faces averaged
    embeddings: np.ndarray | None = None   # (count, 512) float32 unit rows, when known
    faces: tuple = ()                      # the Face objects, when computed here (not stored in files)
    meta: dict = field(default_factory=dict)

    def as_tensors(self) -> dict:
        """{"embedding": torch float32 [1, 512]}: the "face" feature kind emma_core.adapters expects."""
        import torch

        return {"embedding": torch.from_numpy(np.array(self.embedding, dtype=np.float32))[None]}


def _normalise(vec: np.ndarray, what: str) -> np.ndarray:
    vec = np.asarray(vec, dtype=np.float32).reshape(-1)
    if vec.shape[0] != EMBED_DIM:
        raise FaceError(f"{what} has {vec.shape[0]} values, expected a {EMBED_DIM}-d ArcFace embedding")
    if not np.all(np.isfinite(vec)):
        raise FaceError(f"{what} contains NaN or infinite values")
    norm = float(np.linalg.norm(vec))
    if norm < 1e-12:
        raise FaceError(f"{what} is all zeros")
    if abs(norm - 1.0) < 1e-6:  # already unit: keep the exact values (save/load round trips bit-exactly)
        return vec
    return (vec / norm).astype(np.float32)


def average_embeddings(embeddings: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Mean of the L2-normalised rows, re-normalised (the usual way to combine ArcFace references)."""
    rows = np.asarray(embeddings, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows[None]
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise FaceError(f"expected one or more {EMBED_DIM}-d embeddings, got shape {list(rows.shape)}")
    normed = np.stack([_normalise(r, f"embedding {i + 1}") for i, r in enumerate(rows)])
    mean = normed.mean(axis=0)
    if float(np.linalg.norm(mean)) < 1e-6:
        raise FaceError("the reference embeddings cancel out (opposite directions); use other reference images")
    return _normalise(mean, "mean embedding")


# ---------------------------------------------------------------------------------------------------------
# images


def to_uint8_rgb(image: Any, label: str = "image") -> np.ndarray:
    """HxWx3 uint8 RGB from a numpy array or torch tensor: uint8, or float in [0, 1] (ComfyUI IMAGE);
    [1, H, W, C] batches of one, grey and RGBA are accepted."""
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().float().numpy()
    arr = np.asarray(image)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise FaceError(f"{label}: expected one image, got a batch of {arr.shape[0]}; pass them one at a time")
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise FaceError(f"{label}: expected an H x W x 3 RGB image, got shape {list(arr.shape)}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise FaceError(f"{label}: expected uint8 or float pixels in [0, 1], got {arr.dtype}")
        arr = np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0) * 255.0
        arr = np.rint(arr).astype(np.uint8)
    return np.ascontiguousarray(arr)


@contextlib.contextmanager
def _quiet_insightface():
    # insightface 2.1's face_align calls SimilarityTransform.estimate, deprecated in scikit-image 0.26:
    # one FutureWarning per face otherwise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*estimate.*")
        yield


def aligned_crop(image: Any, face: Face, size: int = 224) -> np.ndarray:
    """size x size RGB uint8 crop aligned to ArcFace's 5-point template (insightface's norm_crop)."""
    if size <= 0 or (size % 112 and size % 128):
        raise FaceError(f"aligned crop size must be a multiple of 112 or 128 (e.g. 112, 224, 256), got {size}")
    from insightface.utils import face_align

    rgb = to_uint8_rgb(image)
    kps = np.asarray(face.kps, dtype=np.float32).reshape(5, 2)
    with _quiet_insightface():
        return np.ascontiguousarray(face_align.norm_crop(rgb, landmark=kps, image_size=int(size)))


# ---------------------------------------------------------------------------------------------------------
# analysis


class FaceAnalyzer:
    """insightface FaceAnalysis (detection + recognition only) on a checked pack folder."""

    def __init__(
        self,
        root: str | os.PathLike,
        name: str = "antelopev2",
        providers: str | Sequence[str] = "auto",
        det_size: int | tuple[int, int] = DEFAULT_DET_SIZE,
        det_thresh: float = DEFAULT_DET_THRESH,
    ):
        self.pack_dir = check_pack(root, name)
        self.root = self.pack_dir.parent.parent
        self.name = name
        self.providers = choose_providers(providers) if isinstance(providers, str) else list(providers)
        if isinstance(det_size, int):
            det_size = (det_size, det_size)
        det_size = tuple(int(v) for v in det_size)
        if len(det_size) != 2 or min(det_size) < 32 or any(v % 32 for v in det_size):
            raise FaceError(f"det_size must be two multiples of 32 (e.g. 640, 640), got {det_size}")
        if not 0.0 < float(det_thresh) < 1.0:
            raise FaceError(f"det_thresh must be between 0 and 1, got {det_thresh}")
        self.det_size = det_size
        self.det_thresh = float(det_thresh)
        self._lock = threading.Lock()

        from insightface.app import FaceAnalysis

        files = ", ".join(p.name for p in onnx_files(self.pack_dir))
        try:
            # name = the absolute pack folder: insightface reads it as is (no root lookup, no download).
            app = FaceAnalysis(name=str(self.pack_dir), root=str(self.root), providers=self.providers,
                               allowed_modules=["detection", "recognition"])
        except AssertionError as error:  # insightface's "detection" in self.models
            det = KNOWN_PACKS.get(name, {}).get("detector", "a SCRFD detector .onnx")
            raise FaceError(f"face model folder {self.pack_dir} has no face detector insightface can use "
                            f"(files: {files}); it needs {det} from the {name} pack: re-download and unzip "
                            f"the whole pack into {self.pack_dir}{os.sep}") from error
        except Exception as error:  # noqa: BLE001 - corrupt/truncated files, wrong onnxruntime, ...
            raise FaceError(f"insightface could not load the face models in {self.pack_dir} (files: {files}): "
                            f"{type(error).__name__}: {error}. A truncated download or a Git LFS pointer file "
                            f"gives this: re-download the {name} pack and unzip it into {self.pack_dir}{os.sep}"
                            ) from error
        if "recognition" not in app.models:
            rec = KNOWN_PACKS.get(name, {}).get("recognizer", "an ArcFace recognition .onnx (112x112 input)")
            raise FaceError(f"face model folder {self.pack_dir} has no face recognition model (files: {files}); "
                            f"it needs {rec} from the {name} pack: re-download and unzip the whole pack into "
                            f"{self.pack_dir}{os.sep}")
        ctx_id = 0 if CUDA in self.providers else -1
        app.prepare(ctx_id=ctx_id, det_thresh=self.det_thresh, det_size=self.det_size)
        self.app = app

    def __repr__(self) -> str:
        return (f"FaceAnalyzer({str(self.pack_dir)!r}, providers={self.providers}, det_size={self.det_size}, "
                f"det_thresh={self.det_thresh})")

    def faces(self, image: Any, label: str = "image 1") -> list[Face]:
        """Every face found, left to right (by box centre)."""
        rgb = to_uint8_rgb(image, label)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # insightface takes OpenCV's BGR
        with self._lock, _quiet_insightface():
            found = self.app.get(bgr)
        faces = []
        for f in found:
            if getattr(f, "embedding", None) is None:
                continue
            faces.append(Face(
                bbox=np.asarray(f.bbox, dtype=np.float32).reshape(4).copy(),
                kps=np.asarray(f.kps, dtype=np.float32).reshape(5, 2).copy(),
                det_score=float(f.det_score),
                embedding=_normalise(f.embedding, f"face embedding in {label}"),
            ))
        return sorted(faces, key=lambda face: face.center_x)

    def analyze(self, image: Any, index: int | None = None, label: str = "image 1") -> Face:
        """The largest face (by box area), or with `index` the index-th face from the left (0-based)."""
        faces = self.faces(image, label)
        if not faces:
            raise FaceError(f"no face found in {label}; use a clearer, frontal photo or lower det_thresh "
                            f"(now {self.det_thresh})")
        if index is None:
            return max(faces, key=lambda face: face.area)
        index = int(index)
        if not 0 <= index < len(faces):
            raise FaceError(f"face index {index} is out of range for {label}: {len(faces)} face"
                            f"{'s' if len(faces) != 1 else ''} found (indices 0 to {len(faces) - 1}, left to "
                            "right)")
        return faces[index]

    def embed_faces(self, images: Sequence[Any], index: int | Sequence[int | None] | None = None) -> FaceEmbedding:
        return embed_faces(images, self, index=index)


def embed_faces(
    images: Sequence[Any],
    analyzer: FaceAnalyzer,
    index: int | Sequence[int | None] | None = None,
) -> FaceEmbedding:
    """One face per reference image (largest, or `index`: one int for all or one per image), averaged."""
    if hasattr(images, "shape") and len(getattr(images, "shape")) == 4:  # a batch array/tensor
        images = [images[i] for i in range(images.shape[0])]
    images = list(images)
    if not images:
        raise FaceError("no reference images given")
    n = len(images)
    indices = list(index) if isinstance(index, (list, tuple)) else [index] * n
    if len(indices) != n:
        raise FaceError(f"{len(indices)} face indices given for {n} images")
    faces = [analyzer.analyze(img, idx, label=f"image {i + 1} of {n}")
             for i, (img, idx) in enumerate(zip(images, indices))]
    rows = np.stack([f.embedding for f in faces]).astype(np.float32)
    return FaceEmbedding(embedding=average_embeddings(rows), count=n, embeddings=rows, faces=tuple(faces),
                         meta={"pack": analyzer.name})


_ANALYZERS: dict = {}
_ANALYZERS_LOCK = threading.Lock()


def cached_analyzer(root, name="antelopev2", providers="auto", det_size=DEFAULT_DET_SIZE,
                    det_thresh=DEFAULT_DET_THRESH) -> FaceAnalyzer:
    """A FaceAnalyzer shared per (pack folder, providers, det_size, det_thresh); loading one costs seconds."""
    provs = tuple(choose_providers(providers) if isinstance(providers, str) else providers)
    size = (det_size, det_size) if isinstance(det_size, int) else tuple(det_size)
    key = (str(Path(os.path.expanduser(str(root))).resolve()), name, provs, size, float(det_thresh))
    with _ANALYZERS_LOCK:
        analyzer = _ANALYZERS.get(key)
    if analyzer is None or not analyzer.pack_dir.is_dir():
        analyzer = FaceAnalyzer(root, name, list(provs), size, det_thresh)
        with _ANALYZERS_LOCK:
            _ANALYZERS[key] = analyzer
    return analyzer
