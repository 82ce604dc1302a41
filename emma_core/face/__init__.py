"""Face features for EMMA's face modules: insightface ArcFace identities from a checked model pack.

    pack       the model folder: check_pack says what is wrong with it and how to fix it, before insightface runs
    providers  onnxruntime providers, explicit; CUDA only when it really runs
    analysis   FaceAnalyzer, embed_faces, aligned_crop: detection, ArcFace embeddings, identities
    features   face_features: frames -> EMMA face Features (the Face Features node and the trainer alike)

No ComfyUI imports; numpy + insightface (+ onnxruntime, onnx, opencv, which insightface depends on).
Identities are saved with emma_core.features_file (the one features format of the pack).
"""
from .analysis import (DEFAULT_DET_SIZE, DEFAULT_DET_THRESH, EMBED_DIM, Face, FaceAnalyzer, FaceEmbedding,
                       aligned_crop, average_embeddings, cached_analyzer, embed_faces, encoder_name, to_uint8_rgb)
from .features import face_features, face_frames
from .pack import KNOWN_PACKS, FaceError, check_pack
from .providers import choose_providers

__all__ = ["DEFAULT_DET_SIZE", "DEFAULT_DET_THRESH", "EMBED_DIM", "KNOWN_PACKS", "Face", "FaceAnalyzer",
           "FaceEmbedding", "FaceError", "aligned_crop", "average_embeddings", "cached_analyzer", "check_pack",
           "choose_providers", "embed_faces", "encoder_name", "face_features", "face_frames", "to_uint8_rgb"]
