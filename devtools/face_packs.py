"""Tiny InsightFace model packs in the REAL layout, for tests (no model hub is reachable from here).

    from devtools.face_packs import ensure_face_packs
    root = ensure_face_packs(Path(".cache/test-models/insightface"))
    # root/models/antelopev2/{1k3d68,2d106det,genderage,glintr100,scrfd_10g_bnkps}.onnx
    # root/models/buffalo_l/{1k3d68,2d106det,det_10g,genderage,w600k_r50}.onnx

    python -m devtools.face_packs <root>

insightface routes the .onnx files of a pack by their shapes, not their names, so these files go through
the same code as the released packs:

- detector (scrfd_10g_bnkps.onnx / det_10g.onnx): input [1, 3, height, width] (dynamic, like SCRFD), nine
  rank-2 outputs in SCRFD's order - scores [N, 1], boxes [N, 4], keypoints [N, 10] for strides 8, 16, 32,
  two anchors per location (N = H/s * W/s * 2, location-major, anchor-minor). insightface's SCRFD class
  decodes them (distance2bbox / distance2kps, times the stride), thresholds and runs NMS.
  The network is a fixed, hand-made blob detector rather than a trained one, so its result is exact and
  deterministic: a skin-colour mask (R-B, R-G and G-B in ranges, through 1x1 Conv + Sigmoid) is
  average-pooled at each stride in a centre window of 4*stride and a surround window twice that size;
  score = sigmoid(12 * (centre fill - ring fill - 0.5)). A skin-coloured blob about 4*stride across scores
  ~1 at its centre; a blank or uniform image scores ~0 everywhere. The box is centred on the blob's
  centroid (first moments from ramp-weighted Convs) with side sqrt(blob area); the five keypoints are the
  ArcFace template scaled into that box.
- recognizer (glintr100.onnx / w600k_r50.onnx): input [None, 3, 112, 112] -> [None, 512], a fixed random
  Conv/Tanh/Gemm network (seeded), so different crops give different embeddings and identical crops
  identical ones.
- landmark (1k3d68: 192x192 -> 3309, 2d106det: 192x192 -> 212) and gender/age (96x96 -> 3) models are
  tiny GlobalAveragePool + Gemm networks, present so the pack folder looks and routes like the real one.

Files are written only when missing or different (tmp file + os.replace), and their bytes are
deterministic. `make_nested_pack`, `make_empty_pack` and `make_partial_pack` build the broken layouts users
end up with, for the error-message tests.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

SEED = 20240612
OPSET = 13
IR_VERSION = 8

PACK_FILES = {
    "antelopev2": {
        "detector": "scrfd_10g_bnkps.onnx",
        "recognizer": "glintr100.onnx",
        "landmark_3d": "1k3d68.onnx",
        "landmark_2d": "2d106det.onnx",
        "genderage": "genderage.onnx",
    },
    "buffalo_l": {
        "detector": "det_10g.onnx",
        "recognizer": "w600k_r50.onnx",
        "landmark_3d": "1k3d68.onnx",
        "landmark_2d": "2d106det.onnx",
        "genderage": "genderage.onnx",
    },
}
STRIDES = (8, 16, 32)
NUM_ANCHORS = 2

# ArcFace's 5-point template in a 112x112 crop (insightface.utils.face_align.arcface_dst), as offsets
# from the crop centre in units of half the crop side.
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
KPS_TEMPLATE = (ARCFACE_DST - 56.0) / 56.0

# Skin-colour mask on the detector's input, which SCRFD feeds as (RGB - 127.5) / 128:
# each row: weights on (R, G, B) and a bias; mask = prod(sigmoid(SHARPNESS * (w . rgb + bias))).
SHARPNESS = 20.0
SKIN_RULES = (
    ((1.0, 0.0, -1.0), -0.20),   # R - B > 0.20 (about 26 levels): warmer than grey/white/blue
    ((-1.0, 0.0, 1.0), 0.95),    # R - B < 0.95: not saturated red
    ((-1.0, 1.0, 0.0), 0.60),    # R - G < 0.60: not pure red/orange
    ((0.0, 1.0, -1.0), 0.02),    # G - B > -0.02: not purple/magenta
)
SCORE_GAIN = 12.0
SCORE_OFFSET = 0.5


# ---------------------------------------------------------------------------------------------------------
# graph building


class _Graph:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes = []
        self.inits = []
        self.count = 0

    def name(self, what: str) -> str:
        self.count += 1
        return f"{self.prefix}{what}_{self.count}"

    def const(self, array: np.ndarray, what: str = "w") -> str:
        from onnx import numpy_helper

        name = self.name(what)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        from onnx import helper

        output = output or self.name(op_type.lower())
        # Node names never start with "Sub"/"Mul": ArcFaceONNX reads those as an mxnet model that
        # normalises inside the graph and would then skip its own (x - 127.5) / 127.5.
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=f"n{len(self.nodes)}_{op_type}", **attrs))
        return output

    def conv(self, x: str, weight: np.ndarray, bias: np.ndarray | None = None, output: str | None = None,
             **attrs) -> str:
        inputs = [x, self.const(weight.astype(np.float32))]
        if bias is not None:
            inputs.append(self.const(bias.astype(np.float32), "b"))
        return self.op("Conv", inputs, output, **attrs)

    def model(self, inputs, outputs, name: str) -> bytes:
        from onnx import checker, helper

        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="emma-devtools-face-packs")
        model.ir_version = IR_VERSION
        checker.check_model(model)
        return model.SerializeToString()


def _flatten_head(g: _Graph, x: str, channels: int, output: str) -> str:
    """[1, A*C, h, w] -> [h*w*A, C] exactly as SCRFD's heads do (permute(0, 2, 3, 1).reshape(-1, C))."""
    t = g.op("Transpose", [x], perm=[0, 2, 3, 1])
    return g.op("Reshape", [t, g.const(np.array([-1, channels], dtype=np.int64), "shape")], output)


@lru_cache(maxsize=None)
def detector_bytes() -> bytes:
    from onnx import TensorProto, helper

    g = _Graph("det_")
    x = "input.1"
    # Skin mask at full resolution, then 4x4 means (every stride is a multiple of 4).
    factors = []
    for weights, bias in SKIN_RULES:
        w = SHARPNESS * np.array(weights, dtype=np.float32).reshape(1, 3, 1, 1)
        b = SHARPNESS * np.array([bias], dtype=np.float32)
        factors.append(g.op("Sigmoid", [g.conv(x, w, b)]))
    mask = factors[0]
    for f in factors[1:]:
        mask = g.op("Mul", [mask, f])
    m4 = g.op("AveragePool", [mask], kernel_shape=[4, 4], strides=[4, 4])

    scores, boxes, kpss = [], [], []
    for stride in STRIDES:
        q = stride // 4  # the stride in m4 cells
        # Centre window 4*stride (4q cells) and surround window 8*stride (8q cells), both centred on the
        # anchor point (x * stride, y * stride); pads make the output exactly H/stride x W/stride.
        # `outer` counts outside-the-image as empty: it gives the blob's area and centroid.
        outer = g.op("AveragePool", [m4], kernel_shape=[8 * q, 8 * q], strides=[q, q],
                     pads=[4 * q, 4 * q, 3 * q, 3 * q], count_include_pad=1)
        # For the score, means over the part of each window inside the image (count_include_pad=0), so
        # the image border is not read as "not skin" (a uniform image must not look like a blob).
        inner_v = g.op("AveragePool", [m4], kernel_shape=[4 * q, 4 * q], strides=[q, q],
                       pads=[2 * q, 2 * q, q, q], count_include_pad=0)
        outer_v = g.op("AveragePool", [m4], kernel_shape=[8 * q, 8 * q], strides=[q, q],
                       pads=[4 * q, 4 * q, 3 * q, 3 * q], count_include_pad=0)
        # centre fill - ring fill = 4/3 (inner - outer) (exact away from the border)
        diff = g.op("Sub", [inner_v, outer_v])
        w = np.full((NUM_ANCHORS, 1, 1, 1), SCORE_GAIN * 4.0 / 3.0, dtype=np.float32)
        b = np.full((NUM_ANCHORS,), -SCORE_GAIN * SCORE_OFFSET, dtype=np.float32)
        score = g.op("Sigmoid", [g.conv(diff, w, b)])
        scores.append(_flatten_head(g, score, 1, f"score_{stride}"))

        # Centroid offsets (in strides) inside the surround window: ramp-weighted means / plain mean.
        k = 8 * q
        offsets = (np.arange(k, dtype=np.float64) - 4 * q + 0.5) / q  # m4 cell centre - anchor, in strides
        ramp_x = np.tile(offsets[None, :], (k, 1)) / (k * k)
        ramp_y = np.tile(offsets[:, None], (1, k)) / (k * k)
        ramps = np.stack([ramp_x, ramp_y])[:, None].astype(np.float32)  # [2, 1, k, k]
        moments = g.conv(m4, ramps, kernel_shape=[k, k], strides=[q, q], pads=[4 * q, 4 * q, 3 * q, 3 * q])
        safe = g.op("Add", [outer, g.const(np.array(1e-6, dtype=np.float32), "eps")])
        dxy = g.op("Div", [moments, safe])  # [1, 2, h, w]
        # Half side of the box, in strides: side = 8 * stride * sqrt(surround fill).
        half = g.op("Sqrt", [outer])
        feats = g.op("Concat", [half, dxy], axis=1)  # [1, 3, h, w]: half, dx, dy
        wb = np.zeros((NUM_ANCHORS * 4, 3, 1, 1), dtype=np.float32)
        wk = np.zeros((NUM_ANCHORS * 10, 3, 1, 1), dtype=np.float32)
        for a in range(NUM_ANCHORS):
            # distance2bbox: x1 = cx - d0, y1 = cy - d1, x2 = cx + d2, y2 = cy + d3 (times the stride)
            wb[a * 4 + 0, :, 0, 0] = (4.0, -1.0, 0.0)
            wb[a * 4 + 1, :, 0, 0] = (4.0, 0.0, -1.0)
            wb[a * 4 + 2, :, 0, 0] = (4.0, 1.0, 0.0)
            wb[a * 4 + 3, :, 0, 0] = (4.0, 0.0, 1.0)
            # distance2kps: px = cx + d (times the stride)
            for p, (tx, ty) in enumerate(KPS_TEMPLATE):
                wk[a * 10 + 2 * p, :, 0, 0] = (4.0 * tx, 1.0, 0.0)
                wk[a * 10 + 2 * p + 1, :, 0, 0] = (4.0 * ty, 0.0, 1.0)
        boxes.append(_flatten_head(g, g.conv(feats, wb), 4, f"bbox_{stride}"))
        kpss.append(_flatten_head(g, g.conv(feats, wk), 10, f"kps_{stride}"))

    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, "height", "width"])]
    outputs = []
    for names, width in ((scores, 1), (boxes, 4), (kpss, 10)):
        for stride, name in zip(STRIDES, names):
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{stride}", width]))
    return g.model(inputs, outputs, "scrfd_standin")


@lru_cache(maxsize=None)
def recognizer_bytes(seed: int = SEED) -> bytes:
    """ArcFace-shaped: [None, 3, 112, 112] -> [None, 512]; fixed random weights."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    g = _Graph("rec_")
    x = "input.1"
    w1 = rng.standard_normal((16, 3, 8, 8)) / np.sqrt(3 * 8 * 8)
    h = g.op("Tanh", [g.conv(x, w1, np.zeros(16), kernel_shape=[8, 8], strides=[8, 8])])  # [N, 16, 14, 14]
    w2 = rng.standard_normal((32, 16, 2, 2)) / np.sqrt(16 * 2 * 2)
    h = g.op("Tanh", [g.conv(h, w2, np.zeros(32), kernel_shape=[2, 2], strides=[2, 2])])  # [N, 32, 7, 7]
    flat = g.op("Flatten", [h], axis=1)
    w3 = (rng.standard_normal((512, 32 * 7 * 7)) / np.sqrt(32 * 7 * 7)).astype(np.float32)
    g.op("Gemm", [flat, g.const(w3), g.const(np.zeros(512, dtype=np.float32), "b")], "683", transB=1)
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["None", 3, 112, 112])]
    outputs = [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])]
    return g.model(inputs, outputs, "arcface_standin")


@lru_cache(maxsize=None)
def pooled_head_bytes(size: int, out_dim: int, seed: int) -> bytes:
    """[None, 3, size, size] -> [None, out_dim]: the shape of insightface's landmark / gender-age models."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    g = _Graph("head_")
    x = "data"
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    w = (rng.standard_normal((out_dim, 3)) * 0.1).astype(np.float32)
    g.op("Gemm", [pooled, g.const(w), g.const(np.zeros(out_dim, dtype=np.float32), "b")], "fc1", transB=1)
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["None", 3, size, size])]
    outputs = [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", out_dim])]
    return g.model(inputs, outputs, f"head_{size}_{out_dim}")


def pack_contents(name: str) -> dict[str, bytes]:
    files = PACK_FILES[name]
    return {
        files["detector"]: detector_bytes(),
        files["recognizer"]: recognizer_bytes(),
        files["landmark_3d"]: pooled_head_bytes(192, 3309, SEED + 1),
        files["landmark_2d"]: pooled_head_bytes(192, 212, SEED + 2),
        files["genderage"]: pooled_head_bytes(96, 3, SEED + 3),
    }


# ---------------------------------------------------------------------------------------------------------
# writing packs


def _write_if_changed(path: Path, data: bytes) -> bool:
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def write_pack(root: Path, name: str, folder: Path | None = None) -> Path:
    """Write the pack `name` into `folder` (default: <root>/models/<name>/, the layout insightface reads)."""
    folder = Path(folder) if folder is not None else Path(root) / "models" / name
    for file_name, data in pack_contents(name).items():
        _write_if_changed(folder / file_name, data)
    return folder


def ensure_face_packs(root: Path, names=("antelopev2", "buffalo_l")) -> Path:
    """Idempotent: both packs under <root>/models/<name>/; returns root."""
    root = Path(root)
    for name in names:
        write_pack(root, name)
    return root


def make_nested_pack(root: Path, name: str = "antelopev2") -> Path:
    """The classic unzip mistake: <root>/models/<name>/<name>/*.onnx. Returns the inner folder."""
    outer = Path(root) / "models" / name
    if outer.exists():
        shutil.rmtree(outer)
    return write_pack(root, name, outer / name)


def make_empty_pack(root: Path, name: str = "antelopev2") -> Path:
    folder = Path(root) / "models" / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def make_partial_pack(root: Path, name: str = "antelopev2", keep: str = "recognizer") -> Path:
    """A pack folder with only one of its models (e.g. only the recognizer: no detector)."""
    folder = make_empty_pack(root, name)
    file_name = PACK_FILES[name][keep]
    _write_if_changed(folder / file_name, pack_contents(name)[file_name])
    return folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="insightface root; packs go to <root>/models/<name>/")
    args = parser.parse_args(argv)
    root = ensure_face_packs(args.root)
    for name in PACK_FILES:
        print(root / "models" / name)


if __name__ == "__main__":
    main()
