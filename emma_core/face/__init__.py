"""Face features for EMMA's face modules: insightface ArcFace identities from a checked model pack.

    pack       the model folder: check_pack says what is wrong with it and how to fix it, before insightface runs
    providers  onnxruntime providers, explicit; CUDA only when it really runs
    analysis   FaceAnalyzer, embed_faces, aligned_crop: detection, ArcFace embeddings, identities
    features   face_features: frames -> EMMA face Features (the Face Features node and the trainer alike);
               imported as emma_core.face.features, since it needs torch

No ComfyUI imports; this package itself needs only numpy + insightface (+ onnxruntime, onnx, opencv, which
insightface depends on): the install check runs it in an environment without torch.
Identities are saved with emma_core.features_file (the one features format of the pack).
"""
from .analysis import (DEFAULT_DET_SIZE, DEFAULT_DET_THRESH, EMBED_DIM, Face, FaceAnalyzer, FaceEmbedding,
                       aligned_crop, average_embeddings, cached_analyzer, embed_faces, encoder_name, to_uint8_rgb)
from .pack import KNOWN_PACKS, FaceError, check_pack
from .providers import choose_providers

__all__ = ["DEFAULT_DET_SIZE", "DEFAULT_DET_THRESH", "EMBED_DIM", "KNOWN_PACKS", "Face", "FaceAnalyzer",
           "FaceEmbedding", "FaceError", "aligned_crop", "average_embeddings", "cached_analyzer", "check_pack",
           "choose_providers", "embed_faces", "encoder_name", "to_uint8_rgb"]
