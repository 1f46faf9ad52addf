"""The 20-value ICface control vector: 17 Action Unit intensities and 3 head angles.

Layout of one attribute vector (``ATTR_NAMES``)::

    index 0..16  AU01 AU02 AU04 AU05 AU06 AU07 AU09 AU10 AU12 AU14 AU15 AU17 AU20 AU23 AU25 AU26 AU45
                 intensities on the OpenFace scale, 0 (absent) .. 5 (maximal)
    index 17..19 pitch yaw roll, radians, OpenFace 2.x convention (``pose_Rx``, ``pose_Ry``,
                 ``pose_Rz``): camera frame x right, y down, z forward; R = Rx(pitch) Ry(yaw) Rz(roll).
                 Seen on the image: pitch > 0 the head tilts down (chin to chest), yaw > 0 the
                 face turns towards the image's left (the subject's right), roll > 0 the head
                 tilts clockwise in the image.

AUs come from MediaPipe's 52 ARKit blendshapes (0..1) through ``AU_FROM_BLENDSHAPES``:
each AU is ``clip(gain * mean(blendshapes), 0, 5)``; AU25 (lips apart) uses
``jawOpen - mouthClose`` as its blendshape value. The table is also in the README.
"""

from __future__ import annotations

import math

import numpy as np

AU_NAMES: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12",
    "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26", "AU45",
)
POSE_NAMES: tuple[str, ...] = ("pitch", "yaw", "roll")
ATTR_NAMES: tuple[str, ...] = AU_NAMES + POSE_NAMES
NUM_AUS = len(AU_NAMES)
NUM_ATTRS = len(ATTR_NAMES)
AU_MAX = 5.0

# MediaPipe's blendshape order (index 0 is "_neutral").
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)
NUM_BLENDSHAPES = len(BLENDSHAPE_NAMES)

# AU -> (blendshapes averaged, gain). AU value = clip(gain * mean, 0, 5).
# Gains: 5 maps the blendshape's 0..1 onto 0..5; blendshapes that rarely pass 0.5 on
# real faces (dimple, stretch, sneer, press, upper-lip raise) get a larger gain.
AU_FROM_BLENDSHAPES: dict[str, tuple[tuple[str, ...], float]] = {
    "AU01": (("browInnerUp",), 5.0),
    "AU02": (("browOuterUpLeft", "browOuterUpRight"), 5.0),
    "AU04": (("browDownLeft", "browDownRight"), 5.0),
    "AU05": (("eyeWideLeft", "eyeWideRight"), 5.0),
    "AU06": (("cheekSquintLeft", "cheekSquintRight"), 5.0),  # see _AU06_FROM_SMILE
    "AU07": (("eyeSquintLeft", "eyeSquintRight"), 5.0),
    "AU09": (("noseSneerLeft", "noseSneerRight"), 10.0),
    "AU10": (("mouthUpperUpLeft", "mouthUpperUpRight"), 10.0),
    "AU12": (("mouthSmileLeft", "mouthSmileRight"), 5.0),
    "AU14": (("mouthDimpleLeft", "mouthDimpleRight"), 10.0),
    "AU15": (("mouthFrownLeft", "mouthFrownRight"), 10.0),
    "AU17": (("mouthShrugLower",), 5.0),
    "AU20": (("mouthStretchLeft", "mouthStretchRight"), 10.0),
    "AU23": (("mouthPressLeft", "mouthPressRight", "mouthRollLower", "mouthRollUpper"), 10.0),
    "AU25": (("jawOpen", "-mouthClose"), 10.0),
    "AU26": (("jawOpen",), 5.0),
    "AU45": (("eyeBlinkLeft", "eyeBlinkRight"), 5.0),
}

_BS_INDEX = {name: i for i, name in enumerate(BLENDSHAPE_NAMES)}


def _mapping_matrix() -> np.ndarray:
    """(52, 17) matrix W with AU_raw = blendshapes @ W (before clipping)."""
    w = np.zeros((NUM_BLENDSHAPES, NUM_AUS), np.float32)
    for j, au in enumerate(AU_NAMES):
        names, gain = AU_FROM_BLENDSHAPES[au]
        positive = [n for n in names if not n.startswith("-")]
        for n in names:
            sign = -1.0 if n.startswith("-") else 1.0
            w[_BS_INDEX[n.lstrip("-")], j] = sign * gain / len(positive)
    return w


_AU_MATRIX = _mapping_matrix()


def blendshapes_to_aus(blendshapes: np.ndarray) -> np.ndarray:
    """Map MediaPipe blendshape scores to the 17 AU intensities.

    AU06 (cheek raiser): MediaPipe's cheekSquint practically never fires (max 1e-5 on a
    MEAD "happy" clip), so AU06 also takes ``sqrt(eyeSquint * mouthSmile)`` (both
    averaged left/right), the narrowing of the eyes that comes with a smile, whichever
    is larger.

    Convention:
        blendshapes: (..., 52) float in 0..1, MediaPipe order (``BLENDSHAPE_NAMES``).
        returns: (..., 17) float32 in 0..5, order ``AU_NAMES``.
    """
    bs = np.asarray(blendshapes, np.float32)
    if bs.shape[-1] != NUM_BLENDSHAPES:
        raise ValueError(f"blendshapes: expected last dimension {NUM_BLENDSHAPES}, got {bs.shape}")
    aus = bs @ _AU_MATRIX
    squint = bs[..., [_BS_INDEX["eyeSquintLeft"], _BS_INDEX["eyeSquintRight"]]].mean(-1)
    smile = bs[..., [_BS_INDEX["mouthSmileLeft"], _BS_INDEX["mouthSmileRight"]]].mean(-1)
    au06 = AU_NAMES.index("AU06")
    aus[..., au06] = np.maximum(aus[..., au06], 5.0 * np.sqrt(np.clip(squint * smile, 0.0, 1.0)))
    return np.clip(aus, 0.0, AU_MAX).astype(np.float32)


def rotation_to_euler(rotation: np.ndarray) -> np.ndarray:
    """Head rotation matrix (OpenFace camera frame) to (pitch, yaw, roll).

    Convention:
        rotation: (3, 3) rotation in the camera frame x right, y down, z forward,
            factorised as R = Rx(pitch) @ Ry(yaw) @ Rz(roll) as OpenFace 2.x does.
        returns: (3,) float32 radians (pitch, yaw, roll).
    """
    r = np.asarray(rotation, np.float64)
    if r.shape != (3, 3):
        raise ValueError(f"rotation: expected shape (3, 3), got {r.shape}")
    yaw = math.asin(max(-1.0, min(1.0, r[0, 2])))
    pitch = math.atan2(-r[1, 2], r[2, 2])
    roll = math.atan2(-r[0, 1], r[0, 0])
    return np.array([pitch, yaw, roll], np.float32)


def euler_to_rotation(angles: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotation_to_euler`: (..., 3) pitch, yaw, roll radians -> (..., 3, 3) rotations
    R = Rx(pitch) @ Ry(yaw) @ Rz(roll), float64."""
    a = np.asarray(angles, np.float64)
    if a.shape[-1:] != (3,):
        raise ValueError(f"angles: expected shape (..., 3), got {a.shape}")
    (ca, cb, cc), (sa, sb, sc) = np.moveaxis(np.cos(a), -1, 0), np.moveaxis(np.sin(a), -1, 0)
    one, zero = np.ones_like(ca), np.zeros_like(ca)
    rx = np.stack([one, zero, zero, zero, ca, -sa, zero, sa, ca], -1).reshape(a.shape[:-1] + (3, 3))
    ry = np.stack([cb, zero, sb, zero, one, zero, -sb, zero, cb], -1).reshape(a.shape[:-1] + (3, 3))
    rz = np.stack([cc, -sc, zero, sc, cc, zero, zero, zero, one], -1).reshape(a.shape[:-1] + (3, 3))
    return rx @ ry @ rz


# MediaPipe's face geometry frame is x right (subject's left on screen... image right),
# y up, z towards the camera; OpenFace's camera frame is x right, y down, z forward.
_MP_TO_CV = np.diag([1.0, -1.0, -1.0])


def mediapipe_matrix_to_euler(matrix: np.ndarray) -> np.ndarray:
    """MediaPipe's 4x4 facial transformation matrix to (pitch, yaw, roll) radians.

    Convention:
        matrix: (4, 4) as returned by FaceLandmarker (canonical face -> camera space,
            MediaPipe frame x right, y up, z towards the viewer).
        returns: (3,) float32 radians in the OpenFace convention (see module docstring).
    """
    m = np.asarray(matrix, np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"matrix: expected shape (4, 4), got {m.shape}")
    rot = m[:3, :3]
    # Remove any scale the matrix carries, then change the frame.
    u, _, vt = np.linalg.svd(rot)
    rot = u @ vt
    return rotation_to_euler(_MP_TO_CV @ rot @ _MP_TO_CV)


def normalize_for_network(attrs: np.ndarray | "torch.Tensor"):  # noqa: F821
    """The paper's network encoding: AU / 5 and (angle + 0.7) / 1.4, both roughly 0..1.

    Convention:
        attrs: (..., 20) AUs 0..5 then pitch/yaw/roll radians. Works on numpy or torch.
        returns: same type and shape.
    """
    au = attrs[..., :NUM_AUS] / AU_MAX
    pose = (attrs[..., NUM_AUS:] + 0.7) / 1.4
    if isinstance(attrs, np.ndarray):
        return np.concatenate([au, pose], axis=-1).astype(np.float32)
    import torch

    return torch.cat([au, pose], dim=-1)


def neutral_attributes() -> np.ndarray:
    """The paper's neutral attributes: zero AUs and zero angles, (20,) float32."""
    return np.zeros(NUM_ATTRS, np.float32)


def attributes_from_face(blendshapes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The 20-value vector of one face: 17 AUs (0..5) then pitch, yaw, roll (radians).

    Convention:
        blendshapes: (52,) 0..1; matrix: (4, 4) MediaPipe facial transformation matrix.
        returns: (20,) float32.
    """
    return np.concatenate([blendshapes_to_aus(blendshapes), mediapipe_matrix_to_euler(matrix)]).astype(np.float32)
