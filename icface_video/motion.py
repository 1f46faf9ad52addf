"""The motion model: attributes -> where the 478 face landmarks go.

Geometry first: a head turn is a rotation of the source's own 3D landmarks, and an
expression is a displacement of the landmarks in the head's own frame, fitted on the
training clips (``python -m train.fit_motion``). The renderer (:mod:`icface_video.geo_render`)
then warps the source picture so that its landmarks land on the predicted ones.

**Head frame.** For landmarks ``L`` (478, 3) in frame pixels (x right, y down, z in the
same units, smaller = nearer the camera) and head angles (pitch, yaw, roll) with
rotation ``R`` (OpenFace convention, :func:`icface_video.attributes.euler_to_rotation`),
the head's centre ``c`` and scale ``s`` are the mean and the RMS spread of the
:data:`~icface_video.mesh_topology.RIGID` landmarks, and the *canonical shape* is
``P = R^T (L - c) / s`` (dimensionless, the head turned frontal).

**Expression.** ``P_t = P_s + sum_f (phi_f(au_t) - phi_f(au_s)) W_f``: per AU, hinge
features ``phi(a) = max(a - k, 0)`` at the knots ``k`` (``knots``, e.g. 0, 1.5, 3), so a
displacement may grow faster or slower at high intensity; ``W`` (F, 478, 3) is fitted by
ridge least squares on pairs of frames of one clip (per-clip centring), with the head
angles as nuisance regressors (they absorb what the angle estimate gets wrong).

**Pose and placement.** ``L_t = c_t + s_t R_t P_t``, ``R_t`` the rotation of the angles
``a_s + g (a_t - a_s)`` with the fitted per-axis pose gain ``g`` (:attr:`MotionModel.pose_gain`);
relative driving keeps the source's
centre and scale (``c_t = c_s``, ``s_t = s_s``); absolute driving may also move and scale
the head in the frame (``placement``). Equal attributes give ``L_t = L_s`` exactly.

The fitted numbers are ``motion.safetensors`` + ``motion.json`` beside the model's weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .attributes import AU_MAX, AU_SCALES, NUM_ATTRS, NUM_AUS, V1_EXTRAPOLATION_LIMIT, euler_to_rotation, to_scale
from .errors import InputError
from .mesh_topology import EYES, NUM_LANDMARKS, RIGID

MOTION_NAME = "motion.json"
MOTION_WEIGHTS = "motion.safetensors"
_RIGID = np.array(RIGID)


def head_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The head's centre and scale from its rigid landmarks.

    Convention:
        landmarks: (..., 478 + K, 3) frame pixels (only the rigid ones among the first 478 count).
        returns: centre (..., 3) pixels and scale (...,) pixels (RMS distance of the rigid
        landmarks from their mean, in 3D, so it does not shrink when the head turns).
    """
    lm = np.asarray(landmarks, np.float64)
    rig = lm[..., _RIGID, :]
    c = rig.mean(axis=-2)
    s = np.sqrt(((rig - c[..., None, :]) ** 2).sum(-1).mean(-1))
    return c, s


def canonical_shape(landmarks: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """``P = R^T (L - c) / s``: the landmarks in the head's own frame (see the module docstring).

    Convention:
        landmarks: (..., 478, 3) frame pixels; pose: (..., 3) pitch, yaw, roll radians.
        returns: (..., 478, 3) float64, dimensionless.
    """
    c, s = head_frame(landmarks)
    r = euler_to_rotation(pose)
    return np.einsum("...ij,...ni->...nj", r, np.asarray(landmarks, np.float64) - c[..., None, :]) / s[..., None, None]


def hinge_features(aus: np.ndarray, knots: tuple[float, ...]) -> np.ndarray:
    """(..., 17) AUs 0..5 -> (..., 17 * len(knots)) features ``max(au - k, 0)``, AU-major."""
    a = np.asarray(aus, np.float64)[..., :NUM_AUS, None]
    return np.maximum(a - np.asarray(knots, np.float64), 0.0).reshape(a.shape[:-2] + (-1,))


@dataclass(frozen=True)
class MotionModel:
    """Fitted expression displacements in the head frame (see the module docstring).

    Attributes:
        knots: hinge knots (AU units) of the features.
        weights: (17 * len(knots), 478, 3) canonical displacement per unit of each feature.
        mean_shape: (478, 3) the mean canonical shape of the training faces.
        mirror: (478,) the landmark that mirrors each one across the face's midline
            (an involution; used to fill skin the source hid).
        meta: fit statistics and provenance (split, clips, frames, errors); ``gain``: the
            calibrated factor on the displacements (:attr:`gain`); ``au_scale``:
            the AU scale the displacements were fitted on (missing = "v1", fitted before the
            OpenFace calibration). AUs given to :meth:`expression_offsets` and
            :meth:`target_landmarks` are on the tool's scale (v2) and converted to it.
    """

    knots: tuple[float, ...]
    weights: np.ndarray
    mean_shape: np.ndarray
    mirror: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = NUM_AUS * len(self.knots)
        if self.weights.shape != (f, NUM_LANDMARKS, 3):
            raise ValueError(f"weights: expected shape ({f}, {NUM_LANDMARKS}, 3), got {self.weights.shape}")
        if self.mean_shape.shape != (NUM_LANDMARKS, 3):
            raise ValueError(f"mean_shape: expected shape ({NUM_LANDMARKS}, 3), got {self.mean_shape.shape}")
        m = np.asarray(self.mirror)
        if m.shape != (NUM_LANDMARKS,) or m.min() < 0 or m.max() >= NUM_LANDMARKS or not np.array_equal(m[m], np.arange(NUM_LANDMARKS)):
            raise ValueError("mirror: expected an involution of the 478 landmark indices")
        if self.au_scale not in AU_SCALES:
            raise ValueError(f"au_scale: expected one of {AU_SCALES}, got {self.au_scale!r}")

    @property
    def au_scale(self) -> str:
        """The AU scale of the fitted displacements ("v1" when the file does not say)."""
        return self.meta.get("au_scale", "v1")

    def expression_offsets(self, source_aus: np.ndarray, target_aus: np.ndarray) -> np.ndarray:
        """(B, 478, 3) canonical displacements from ``source_aus`` (17,) or (B, 17) to ``target_aus`` (B, 17),
        both on the tool's AU scale (v2; converted to :attr:`au_scale` here, extrapolated past v1's range: :func:`~icface_video.attributes.to_scale`)."""
        # Extrapolated past v1's range: hand-set values above what MediaPipe measures (AU12
        # over about 2) keep growing the displacement instead of all rendering alike.
        src = to_scale(np.asarray(source_aus, np.float64)[..., :NUM_AUS], self.au_scale, extrapolate=True)
        tgt = to_scale(np.asarray(target_aus, np.float64)[..., :NUM_AUS], self.au_scale, extrapolate=True)
        limit = self.extrapolation_limits
        src, tgt = np.minimum(src, limit), np.minimum(tgt, limit)
        d = hinge_features(tgt, self.knots) - hinge_features(src, self.knots)
        d = d * np.repeat(self.gain, len(self.knots))  # features are AU-major
        return np.einsum("bf,fnk->bnk", np.atleast_2d(d), self.weights)

    @cached_property
    def extrapolation_limits(self) -> np.ndarray:
        """(17,) how far (v1 units, 5..12.5) each AU's displacement may be continued past
        v1's measured range 5 before the mesh folds.

        The largest value, in steps of 0.25, at which that AU alone, applied to the mean
        face, keeps the lids at least a quarter as far apart as the mean face's (each
        upper-lid landmark against the lower-lid one facing it,
        :data:`~icface_video.mesh_topology.EYES`; closer, real faces show the lids folding
        over as dark wedges) and flips no face-mesh triangle that is sound at 5 (signed
        frontal area at least a quarter of the mean face's, falling below a twentieth).
        Larger requests render as the limit; an AU already past either test at 5 is not
        continued (5).
        """
        from .geo_render import signed_areas
        from .mesh_warp import mesh_triangles

        tris = mesh_triangles()
        upper = np.array([e.upper for e in EYES]).ravel()
        lower = np.array([e.lower for e in EYES]).ravel()
        base = signed_areas(self.mean_shape[tris, :2])
        opening = self.mean_shape[lower, 1] - self.mean_shape[upper, 1]  # (14,) > 0: y points down
        steps = np.arange(AU_MAX, V1_EXTRAPOLATION_LIMIT + 1e-9, 0.25)  # steps[0] = 5: the reference
        gain = np.repeat(self.gain, len(self.knots))  # features are AU-major
        limits = np.full(NUM_AUS, AU_MAX)
        for j in range(NUM_AUS):
            aus = np.zeros((len(steps), NUM_AUS))
            aus[:, j] = steps  # this AU alone, at each step
            shapes = self.mean_shape + np.einsum("sf,fnc->snc", hinge_features(aus, self.knots) * gain, self.weights)
            lids_open = ((shapes[:, lower, 1] - shapes[:, upper, 1]) / opening >= 0.25).all(axis=1)
            ratio = signed_areas(shapes[:, tris, :2]) / base
            sound = ratio[0] >= 0.25
            unfolded = (ratio[:, sound] >= 0.05).all(axis=1) & lids_open
            bad = np.nonzero(~unfolded[1:])[0]
            last = len(steps) - 1 if len(bad) == 0 else bad[0]  # index into steps of the last good value
            limits[j] = steps[last] if unfolded[0] else AU_MAX
        return limits

    @property
    def pose_gain(self) -> np.ndarray:
        """(3,) factor on the change of pitch, yaw and roll (``meta["pose_gain"]``; 1 when
        absent): MediaPipe's head angles (from its transformation matrix) and the turn of
        its own landmark cloud differ (on the train clips the landmarks turn about 1.17
        times the yaw change), so the source's landmarks are turned by
        ``gain * (target - source)``; ``train.fit_motion`` fits it by least squares on the
        landmarks of train pairs. Equal angles still give no turn."""
        g = np.asarray(self.meta.get("pose_gain", 1.0), np.float64)
        return np.broadcast_to(g, (3,)) if g.ndim == 0 else g.reshape(3)

    @property
    def gain(self) -> np.ndarray:
        """(17,) factor per AU on the fitted displacements (``meta["gain"]``, a number or 17;
        1 when absent): least squares on noisy AUs under-estimates the motion (regression
        dilution), so ``train.fit_motion`` calibrates it by rendering train pairs and
        re-measuring their AUs."""
        g = np.asarray(self.meta.get("gain", 1.0), np.float64)
        return np.broadcast_to(g, (NUM_AUS,)) if g.ndim == 0 else g.reshape(NUM_AUS)

    def target_landmarks(self, source_landmarks: np.ndarray, source_attrs: np.ndarray, target_attrs: np.ndarray,
                         placement: np.ndarray | None = None) -> np.ndarray:
        """Where the source's landmarks go for each target attribute vector.

        Convention:
            source_landmarks: (478 + K, 3) frame pixels: the landmarks, then K optional
                points that move rigidly with the head (no expression; e.g. the renderer's
                hair ring); source_attrs: (20,) AUs 0..5 then
                pitch/yaw/roll radians; target_attrs: (B, 20).
            placement: optional (B, 3): the head centre's shift (dx, dy) in frame pixels
                and its scale factor; None = the source's own centre and scale.
            returns: (B, 478 + K, 3) float64 frame pixels (equal to the source's when the
            attributes are equal and placement is None or (0, 0, 1)).
        """
        src = np.asarray(source_landmarks, np.float64)
        sa = np.asarray(source_attrs, np.float64).reshape(NUM_ATTRS)
        ta = np.atleast_2d(np.asarray(target_attrs, np.float64))
        if src.ndim != 2 or src.shape[0] < NUM_LANDMARKS or src.shape[1] != 3:
            raise ValueError(f"source_landmarks: expected shape ({NUM_LANDMARKS} + K, 3), got {src.shape}")
        if ta.shape[1:] != (NUM_ATTRS,):
            raise ValueError(f"target_attrs: expected shape (B, {NUM_ATTRS}), got {ta.shape}")
        c, s = head_frame(src)
        p = np.repeat(canonical_shape(src, sa[NUM_AUS:])[None], len(ta), axis=0)  # (B, 478 + K, 3)
        p[:, :NUM_LANDMARKS] += self.expression_offsets(sa[:NUM_AUS], ta[:, :NUM_AUS])
        angles = sa[NUM_AUS:] + self.pose_gain * (ta[:, NUM_AUS:] - sa[NUM_AUS:])  # the landmarks' own turn
        r = euler_to_rotation(angles)  # (B, 3, 3)
        ct = np.broadcast_to(c, (len(ta), 3)).copy()
        st = np.full(len(ta), s)
        if placement is not None:
            pl = np.asarray(placement, np.float64).reshape(len(ta), 3)
            ct[:, :2] += pl[:, :2]
            st = st * pl[:, 2]
        return ct[:, None, :] + st[:, None, None] * np.einsum("bij,bnj->bni", r, p)

    # -- files ---------------------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        """Write ``motion.json`` and ``motion.safetensors`` into ``folder``."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"weights": self.weights.astype(np.float32), "mean_shape": self.mean_shape.astype(np.float32),
                   "mirror": np.asarray(self.mirror, np.int32)}, str(folder / MOTION_WEIGHTS))
        (folder / MOTION_WEIGHTS).chmod(0o644)
        (folder / MOTION_NAME).write_text(json.dumps({"version": 1, "knots": list(self.knots), **self.meta}, indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "MotionModel":
        """Read a model folder's motion model.

        Raises:
            InputError: a file is missing, corrupt or does not fit (naming the file).
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(folder)
        meta_path, weights_path = folder / MOTION_NAME, folder / MOTION_WEIGHTS
        try:
            meta = json.loads(meta_path.read_text())
            knots = tuple(float(k) for k in meta.pop("knots"))
        except FileNotFoundError:
            raise InputError(meta_path, "motion model missing (python -m train.fit_motion writes it)") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(meta_path, f"unusable motion model file ({exc})") from None
        try:
            t = load_file(str(weights_path))
            return cls(knots, t["weights"].astype(np.float64), t["mean_shape"].astype(np.float64),
                       t["mirror"].astype(np.int64), meta)
        except FileNotFoundError:
            raise InputError(weights_path, "motion weights missing") from None
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise InputError(weights_path, f"corrupt or unusable motion weights ({exc})") from None
