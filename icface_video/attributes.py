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
each raw AU is ``clip(gain * mean(blendshapes), 0, 5)``; AU25 (lips apart) uses
``jawOpen - mouthClose`` as its blendshape value. The table is also in the README.

AU scales: the raw values above are the **v1** scale (what every model and eyelid warp
before the calibration was trained or fitted on). The tool's own scale, **v2**
(``AU_SCALE``), is v1 passed through a per-AU monotone piecewise-linear map fitted to
OpenFace 2.x's intensities (``au_calibration.json``, written by ``python -m
train.fit_au_scale``): :func:`attributes_from_face` returns v2, CSVs and controls are v2,
and :func:`to_scale` / :func:`from_scale` convert at a model's input boundary.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

# An attribute array on either side of the network: numpy or torch (same type in, same type out).
_Attrs = TypeVar("_Attrs", np.ndarray, "torch.Tensor")

AU_NAMES: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12",
    "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26", "AU45",
)
POSE_NAMES: tuple[str, ...] = ("pitch", "yaw", "roll")
ATTR_NAMES: tuple[str, ...] = AU_NAMES + POSE_NAMES
NUM_AUS = len(AU_NAMES)
# What each AU is, in words (FACS names; the README's "Action Units from blendshapes" table).
AU_DESCRIPTIONS: dict[str, str] = {
    "AU01": "inner brow raiser", "AU02": "outer brow raiser", "AU04": "brow lowerer",
    "AU05": "upper lid raiser", "AU06": "cheek raiser", "AU07": "lid tightener", "AU09": "nose wrinkler",
    "AU10": "upper lip raiser", "AU12": "lip corner puller (smile)", "AU14": "dimpler",
    "AU15": "lip corner depressor", "AU17": "chin raiser", "AU20": "lip stretcher", "AU23": "lip tightener",
    "AU25": "lips part", "AU26": "jaw drop", "AU45": "blink",
}
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


def blendshapes_to_aus(blendshapes: np.ndarray, scale: str = "v2") -> np.ndarray:
    """Map MediaPipe blendshape scores to the 17 AU intensities on ``scale``.

    AU06 (cheek raiser): MediaPipe's cheekSquint practically never fires (max 1e-5 on a
    MEAD "happy" clip), so AU06 also takes ``sqrt(eyeSquint * mouthSmile)`` (both
    averaged left/right), the narrowing of the eyes that comes with a smile, whichever
    is larger.

    Convention:
        blendshapes: (..., 52) float in 0..1, MediaPipe order (``BLENDSHAPE_NAMES``).
        scale: ``"v2"`` (default: calibrated to OpenFace, see :func:`to_scale`) or
            ``"v1"`` (the raw mapping above).
        returns: (..., 17) float32 in 0..5, order ``AU_NAMES``.
    """
    _check_scale(scale)
    bs = np.asarray(blendshapes, np.float32)
    if bs.shape[-1] != NUM_BLENDSHAPES:
        raise ValueError(f"blendshapes: expected last dimension {NUM_BLENDSHAPES}, got {bs.shape}")
    aus = bs @ _AU_MATRIX
    squint = bs[..., [_BS_INDEX["eyeSquintLeft"], _BS_INDEX["eyeSquintRight"]]].mean(-1)
    smile = bs[..., [_BS_INDEX["mouthSmileLeft"], _BS_INDEX["mouthSmileRight"]]].mean(-1)
    au06 = AU_NAMES.index("AU06")
    aus[..., au06] = np.maximum(aus[..., au06], 5.0 * np.sqrt(np.clip(squint * smile, 0.0, 1.0)))
    aus = np.clip(aus, 0.0, AU_MAX).astype(np.float32)
    return aus if scale == "v1" else from_scale(aus, "v1")


# -- AU scales ---------------------------------------------------------------------------

#: The AU scales: "v1" = the raw blendshape mapping (models trained before the
#: calibration, ``eyelids.json`` files); "v2" = calibrated to OpenFace 2.x.
AU_SCALES: tuple[str, ...] = ("v1", "v2")
#: The scale of everything this tool reads and writes (CSVs, presets, ``--set``, keyframes).
AU_SCALE = "v2"
CALIBRATION_PATH = Path(__file__).resolve().parent / "au_calibration.json"


def _check_scale(scale: str) -> None:
    if scale not in AU_SCALES:
        raise ValueError(f"scale: expected one of {AU_SCALES}, got {scale!r}")


@dataclass(frozen=True)
class AuCalibration:
    """The v1 -> v2 map: per AU a strictly increasing piecewise-linear curve through knots.

    Attributes:
        v1: 17 knot abscissae on the v1 scale, each (K,) float64 from 0 to 5 strictly
            increasing (order ``AU_NAMES``).
        v2: 17 knot ordinates on the v2 scale, each (K,) from 0, strictly increasing, <= 5.
        meta: the file's provenance and per-AU fit figures (informative only).
    """

    v1: tuple[np.ndarray, ...]
    v2: tuple[np.ndarray, ...]
    meta: dict

    @classmethod
    def from_dict(cls, doc: dict, where: str = "calibration") -> "AuCalibration":
        """Build and check from the JSON layout ``{"aus": {"AU01": {"v1": [...], "v2": [...]}, ...}}``.

        Raises:
            ValueError: a missing AU, or knots that are not a strictly increasing curve
                from (0, 0) to (5, <= 5) (the map would not be invertible).
        """
        try:
            aus = doc["aus"]
            xs = [np.asarray(aus[au]["v1"], np.float64) for au in AU_NAMES]
            ys = [np.asarray(aus[au]["v2"], np.float64) for au in AU_NAMES]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: missing or malformed AU knots ({exc})") from None
        for au, x, y in zip(AU_NAMES, xs, ys):
            ok = (x.ndim == 1 and x.shape == y.shape and len(x) >= 2 and np.isfinite(x).all()
                  and np.isfinite(y).all() and x[0] == 0.0 and y[0] == 0.0 and x[-1] == AU_MAX
                  and y[-1] <= AU_MAX and (np.diff(x) > 0).all() and (np.diff(y) > 0).all())
            if not ok:
                raise ValueError(f"{where}: {au}: knots must rise strictly from (0, 0) to (5, <= 5)")
        return cls(tuple(xs), tuple(ys), {k: v for k, v in doc.items() if k != "aus"})

    def to_dict(self) -> dict:
        doc = dict(self.meta)
        doc["aus"] = {au: {"v1": [round(float(v), 4) for v in x], "v2": [round(float(v), 4) for v in y]}
                      for au, x, y in zip(AU_NAMES, self.v1, self.v2)}
        return doc


@lru_cache(maxsize=1)
def au_calibration() -> AuCalibration:
    """The shipped calibration (``icface_video/au_calibration.json``), read once."""
    return AuCalibration.from_dict(json.loads(CALIBRATION_PATH.read_text()), str(CALIBRATION_PATH))


#: The furthest :func:`to_scale` continues a v1 value past v1's own maximum 5 when asked to
#: extrapolate (2.5 times the range MediaPipe measures: where AU12 5 on the OpenFace scale lands).
V1_EXTRAPOLATION_LIMIT = 2.5 * AU_MAX


def _map_aus(attrs, forward: bool, calibration: AuCalibration | None, extrapolate: bool = False):
    """Apply the v1 -> v2 map (``forward``) or its inverse to the AU columns of ``attrs``
    (``extrapolate``: see :func:`to_scale`)."""
    cal = calibration or au_calibration()
    torch_in = not isinstance(attrs, np.ndarray) and hasattr(attrs, "detach")
    a = attrs.detach().cpu().numpy() if torch_in else np.asarray(attrs)
    if a.shape[-1] not in (NUM_AUS, NUM_ATTRS):
        raise ValueError(f"attrs: expected last dimension {NUM_AUS} or {NUM_ATTRS}, got {a.shape}")
    out = np.array(a, np.float32, copy=True)
    for j in range(NUM_AUS):
        x, y = (cal.v1[j], cal.v2[j]) if forward else (cal.v2[j], cal.v1[j])
        # np.interp holds the end values outside the knots: below 0 -> 0, above the last
        # knot -> the other scale's maximum (the clipping documented in to_scale).
        v = out[..., j]
        mapped = np.interp(v, x, y)
        if extrapolate and not forward:
            slope = (y[-1] - y[-2]) / (x[-1] - x[-2])  # the last segment, continued
            above = np.minimum(y[-1] + (v - x[-1]) * slope, V1_EXTRAPOLATION_LIMIT)
            mapped = np.where(v > x[-1], above, mapped)
        out[..., j] = mapped
    if torch_in:
        import torch

        return torch.from_numpy(out).to(device=attrs.device, dtype=attrs.dtype)
    return out


def to_scale(attrs, scale: str, calibration: AuCalibration | None = None, extrapolate: bool = False):
    """Convert attributes from the tool's scale (v2) to ``scale`` (for a model's input).

    Each AU goes through the inverse of its v1 -> v2 curve; angles pass unchanged. The
    curves rise strictly from (0, 0), so the conversion is exact (invertible) on the
    whole range that v1 reaches, v2 in ``[0, v2(5)]``; values below 0 become 0. A v2
    value above ``v2(5)`` (AU12 about 2: what OpenFace reads on the broadest smile
    MediaPipe measures; AU06 1.3, AU01 and AU07 3) becomes v1's maximum 5, or with
    ``extrapolate`` follows the curve's last segment on, up to
    :data:`V1_EXTRAPOLATION_LIMIT` (for the motion model, whose displacements are linear
    there: an AU12 of 4 then smiles wider than one of 2 instead of alike).

    Convention:
        attrs: (..., 20) or (..., 17), numpy or torch (same type, device, dtype back).
        scale: ``"v1"`` or ``"v2"`` (v2 returns a copy).
        returns: AUs 0..5 on ``scale`` (0..12.5 on v1 with ``extrapolate``), angles unchanged.
    """
    _check_scale(scale)
    if scale == AU_SCALE:
        return attrs.clone() if hasattr(attrs, "clone") else np.array(attrs, np.float32, copy=True)
    return _map_aus(attrs, forward=False, calibration=calibration, extrapolate=extrapolate)


def from_scale(attrs, scale: str, calibration: AuCalibration | None = None):
    """Convert attributes on ``scale`` to the tool's scale (v2): inverse of :func:`to_scale`.

    Convention as :func:`to_scale`; v1 values outside 0..5 are held at the ends.
    """
    _check_scale(scale)
    if scale == AU_SCALE:
        return attrs.clone() if hasattr(attrs, "clone") else np.array(attrs, np.float32, copy=True)
    return _map_aus(attrs, forward=True, calibration=calibration)


def convert_scale(attrs, source: str, target: str, calibration: AuCalibration | None = None):
    """Attributes on AU scale ``source`` -> scale ``target`` (through v2); a copy when equal."""
    _check_scale(source)
    _check_scale(target)
    if source == target:
        return attrs.clone() if hasattr(attrs, "clone") else np.array(attrs, np.float32, copy=True)
    return to_scale(from_scale(attrs, source, calibration), target, calibration)


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


def normalize_for_network(attrs: _Attrs) -> _Attrs:
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


class AttributeSeries:
    """What the per-frame attribute time series share: ``times`` (N,) s and ``success``
    (N,) bool (where a face was measured), and their length.

    Three stages of the data flow hold one (each docstring says how it becomes the next):
    :class:`icface_video.track.FaceTrack` (a video or photo measured), and
    :class:`icface_video.csvio.AttributeTable` (measurements read back from a CSV), both
    turned into :class:`icface_video.driving.AttributeTrack` (a driving signal: smoothed,
    on an exact frame rate, sampled at the output's times).
    """

    times: np.ndarray
    success: np.ndarray

    @property
    def num_frames(self) -> int:
        """N, the number of frames."""
        return int(self.times.shape[0])


def clip_aus(attrs: np.ndarray) -> np.ndarray:
    """Clip the AU intensities to their range 0..``AU_MAX`` (5), in place; angles are kept.

    Convention: attrs (..., 20) numpy, AUs then pitch/yaw/roll radians; returns ``attrs``.
    """
    attrs[..., :NUM_AUS] = np.clip(attrs[..., :NUM_AUS], 0.0, AU_MAX)
    return attrs


def neutral_attributes() -> np.ndarray:
    """The paper's neutral attributes: zero AUs and zero angles, (20,) float32."""
    return np.zeros(NUM_ATTRS, np.float32)


def attributes_from_face(blendshapes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The 20-value vector of one face: 17 AUs (0..5, calibrated scale v2) then pitch, yaw, roll (radians).

    Convention:
        blendshapes: (52,) 0..1; matrix: (4, 4) MediaPipe facial transformation matrix.
        returns: (20,) float32.
    """
    return np.concatenate([blendshapes_to_aus(blendshapes), mediapipe_matrix_to_euler(matrix)]).astype(np.float32)
