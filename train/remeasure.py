"""Re-measurement: attributes and landmarks read back from crops by the project's own extractor.

Crops are upscaled (bicubic) to :data:`ANALYSIS_SIZE` px before face analysis and SFace,
and analysed with one video-mode :class:`~icface_video.face.FaceAnalyzer` per sequence.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

from icface_video.attributes import attributes_from_face

__all__ = ["ANALYSIS_SIZE", "AttributeReader", "scale_points", "upscale"]

ANALYSIS_SIZE = 256  # crops are upscaled to this side before face analysis and SFace


def upscale(crops: np.ndarray, size: int = ANALYSIS_SIZE) -> np.ndarray:
    """(K, R, R, 3) uint8 -> (K, size, size, 3) uint8 (bicubic)."""
    if crops.shape[1] == size:
        return crops
    return np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in crops])


def scale_points(points: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Pixel coordinates (centre convention) of an image of side ``src`` in one of side ``dst``."""
    s = dst / src
    return (np.asarray(points, np.float32) + 0.5) * s - 0.5


class AttributeReader:
    """Re-extract attributes and landmarks from crops, as the project's extractor sees them."""

    def __init__(self, size: int = ANALYSIS_SIZE) -> None:
        self.size = size

    def sequence(self, crops: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One video-mode analyzer over a sequence of (K, R, R, 3) uint8 crops.

        Returns:
            attrs (K, 20) float32 (NaN rows where no face was found) and landmarks
            (K, 478, 2) float32 in ``self.size`` pixels (NaN where no face).
        """
        from icface_video.face import FaceAnalyzer
        from icface_video.mesh_topology import NUM_LANDMARKS

        big = upscale(crops, self.size)
        k = len(big)
        attrs = np.full((k, 20), np.nan, np.float32)
        lms = np.full((k, NUM_LANDMARKS, 2), np.nan, np.float32)
        seen: dict[bytes, int] = {}
        with FaceAnalyzer(mode="video") as fa:
            for i in range(k):
                key = hashlib.sha1(big[i].tobytes()).digest()
                if key in seen:  # identical image (no-motion): same answer
                    attrs[i], lms[i] = attrs[seen[key]], lms[seen[key]]
                    continue
                seen[key] = i
                face = fa.analyze(big[i], float(times[i]))
                if face is not None:
                    attrs[i] = attributes_from_face(face.blendshapes, face.matrix)
                    lms[i] = face.landmarks[:, :2]
        return attrs, lms
