"""Attribute CSV files: writing OpenFace 2.x-style rows, reading ours or OpenFace's.

Columns written (one row per decoded frame)::

    frame, face_id, timestamp, confidence, success, pose_Rx, pose_Ry, pose_Rz, AU01_r, ..., AU45_r
    [bs_<name> x 52]                                  with blendshapes
    [mp_x_0..mp_x_477, mp_y_0.., mp_z_0..mp_z_477]    with landmarks (full-frame pixels)

``frame`` is 1-based, ``face_id`` 0 (the one face the file follows), ``timestamp`` in
seconds, ``pose_R*`` in radians (OpenFace convention, see :mod:`icface_video.attributes`),
AUs 0..5 on the calibrated scale (v2). The landmark names keep clear of OpenFace's
68-point ``x_i``/``y_i``/``X_i``. OpenFace 2.x files have the same names with a space
after each comma and 700+ columns; the reader takes both, and the files written before
the calibration (header ``frame, timestamp, confidence, success, pose_Rx, ...``: no
``face_id``), whose AUs are on the old scale v1 and are converted to v2 on reading.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .attributes import AU_NAMES, BLENDSHAPE_NAMES, NUM_ATTRS, NUM_AUS, AttributeSeries, clip_aus, from_scale
from .errors import InputError
from .smoothing import fill_missing

POSE_COLUMNS = ("pose_Rx", "pose_Ry", "pose_Rz")
AU_COLUMNS = tuple(f"{au}_r" for au in AU_NAMES)
BASE_COLUMNS = ("frame", "face_id", "timestamp", "confidence", "success") + POSE_COLUMNS + AU_COLUMNS
#: The header start of files written before the calibration (AUs on scale v1).
V1_COLUMNS = ("frame", "timestamp", "confidence", "success") + POSE_COLUMNS + AU_COLUMNS
#: Face id columns: OpenFace 2.x's ``face_id``; ``face`` in some multi-face tools' output.
FACE_COLUMNS = ("face_id", "face")
LANDMARK_PREFIX = "mp_"


def _fmt(v: float) -> str:
    return f"{v:.5g}"


def write_attributes_csv(
    path: str | os.PathLike,
    times: np.ndarray,
    attrs: np.ndarray,
    success: np.ndarray,
    confidence: np.ndarray,
    blendshapes: np.ndarray | None = None,
    landmarks: np.ndarray | None = None,
) -> None:
    """Write one row per frame to ``path`` (the caller handles temp names and renames).

    Convention:
        times: (N,) s; attrs: (N, 20) AUs 0..5 + pitch/yaw/roll rad; success: (N,) bool;
        confidence: (N,) 0..1; blendshapes: (N, 52) or None; landmarks: (N, 478, 3) or None.
    """
    n = len(times)
    header = list(BASE_COLUMNS)
    if blendshapes is not None:
        header += [f"bs_{name}" for name in BLENDSHAPE_NAMES]
    if landmarks is not None:
        k = landmarks.shape[1]
        header += [f"{LANDMARK_PREFIX}{axis}_{i}" for axis in "xyz" for i in range(k)]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for i in range(n):
            a = attrs[i]
            row = [str(i + 1), "0", f"{times[i]:.4f}", f"{confidence[i]:.3f}", str(int(success[i]))]
            row += [_fmt(v) for v in a[NUM_AUS:]] + [f"{v:.4f}" for v in a[:NUM_AUS]]
            if blendshapes is not None:
                row += [_fmt(v) for v in blendshapes[i]]
            if landmarks is not None:
                row += [f"{v:.2f}" for v in landmarks[i].T.reshape(-1)]
            writer.writerow(row)


@dataclass(frozen=True)
class AttributeTable(AttributeSeries):
    """Attributes read from a CSV file: the stage of measurements read back from a file.

    The rows of one face as the file has them (gap-filled, not smoothed), the CSV's
    counterpart of :class:`icface_video.track.FaceTrack` (which also holds the geometry
    a CSV lacks). :meth:`icface_video.driving.AttributeTrack.from_table` makes it a
    driving signal (smoothed, on an exact frame rate).

    Attributes:
        times: (N,) seconds; success: (N,) bool; attrs: (N, 20) with rows that had no
            face filled from neighbours, AUs on the calibrated scale (v2); path: the file.
        file_au_scale: the scale the file's AUs were on ("v1": written before the
            calibration, converted; "v2": ours now, or OpenFace's).
        face_id: the face id the rows came from (None: the file has no face column).
    """

    path: str
    times: np.ndarray
    success: np.ndarray
    attrs: np.ndarray
    file_au_scale: str = "v2"
    face_id: int | None = None

    @property
    def fps(self) -> Fraction:
        """The frame rate of the timestamps, exact (:func:`icface_video.media.rate_from_times`:
        snapped to a standard rate within 0.2%, 25 when they give none)."""
        from .media import rate_from_times

        return rate_from_times(self.times)


ATTR_VALUE_LIMIT = 1e6  # larger AU or angle values (radians) are not measurements


def _face_id(text: str) -> int | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return int(v) if v.is_integer() else None


def read_attributes_csv(path: str | os.PathLike, face_index: int = 0) -> AttributeTable:
    """Read an attribute CSV written by ``icface-video extract`` or by OpenFace 2.x.

    Only the pose and AU intensity columns are required; ``timestamp`` defaults to
    frame / 25 s and ``success`` to 1. A file with a face column (``face_id``, or
    ``face``: multi-face output, one row per face and frame) gives the rows of one face:
    ``face_index`` 0 = the smallest face id present, 1 = the next, ... A file written
    before the calibration (no ``face_id``, header ``frame, timestamp, ...``) has its
    AUs converted from scale v1 to v2.

    Raises:
        InputError: missing file, not a CSV, missing columns, non-numeric values, no rows,
            no row with success = 1, a face index beyond the faces in the file, or a
            frame number repeated within the face read (several faces with no face
            column to tell them apart).
    """
    if isinstance(face_index, bool) or not isinstance(face_index, int) or face_index < 0:
        raise ValueError(f"face_index: expected an integer >= 0, got {face_index!r}")
    from .media import FALLBACK_RATE, file_problem

    p = Path(path)
    problem = file_problem(p, "an attribute CSV")
    if problem and problem != "empty file":
        raise InputError(p, problem)
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, skipinitialspace=True)
            header = next(reader, None)
            if header is None:
                raise InputError(p, "empty CSV file")
            header = [h.strip() for h in header]
            col = {name: i for i, name in enumerate(header)}
            missing = [c for c in POSE_COLUMNS + AU_COLUMNS if c not in col]
            if missing:
                raise InputError(p, f"not an attribute CSV: missing column(s) {', '.join(missing[:4])}"
                                 + (" ..." if len(missing) > 4 else ""))
            want = [col[c] for c in AU_COLUMNS + POSE_COLUMNS]
            face_col = next((col[c] for c in FACE_COLUMNS if c in col), None)
            file_scale = "v1" if face_col is None and tuple(header[:len(V1_COLUMNS)]) == V1_COLUMNS else "v2"
            by_face: dict[int, tuple[list, list, list, list, list]] = {}
            for line_no, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                try:
                    fid = 0 if face_col is None else _face_id(row[face_col])
                    if fid is None:
                        raise ValueError
                    rows_f, rows_t, rows_ok, rows_a, lines = by_face.setdefault(fid, ([], [], [], [], []))
                    rows_a.append([float(row[i]) for i in want])
                    rows_t.append(float(row[col["timestamp"]]) if "timestamp" in col else len(rows_t) / float(FALLBACK_RATE))
                    rows_ok.append(float(row[col["success"]]) > 0.5 if "success" in col else True)
                    rows_f.append(row[col["frame"]].strip() if "frame" in col else str(line_no))
                    lines.append(line_no)
                except (ValueError, IndexError):
                    raise InputError(p, f"line {line_no}: missing or non-numeric value") from None
    except UnicodeDecodeError:
        raise InputError(p, "not a text CSV file") from None
    if not by_face:
        raise InputError(p, "no data rows")
    ids = sorted(by_face)
    if face_index >= len(ids):
        raise InputError(p, f"face index {face_index} asked for, but the file has {len(ids)} face(s) "
                            f"(face ids {', '.join(map(str, ids[:8]))}{' ...' if len(ids) > 8 else ''})")
    rows_f, rows_t, rows_ok, rows_a, lines = by_face[ids[face_index]]
    if len(set(rows_f)) != len(rows_f):
        seen: set[str] = set()
        for dup in rows_f:  # the first frame number seen twice
            if dup in seen:
                break
            seen.add(dup)
        raise InputError(p, f"frame {dup} appears more than once"
                            + (f" for face {ids[face_index]}" if face_col is not None else
                               " (several faces per frame? the file has no face_id column to tell them apart)"))
    times = np.array(rows_t, np.float64)
    ok = np.array(rows_ok, bool)
    if not ok.any():
        raise InputError(p, "no row with a face (success = 1)")
    wide = np.array(rows_a, np.float64)
    # Checked in float64, before the cast: 1e300 would overflow float32 (with a warning).
    bad = ~(np.abs(wide) <= ATTR_VALUE_LIMIT).all(axis=1) & ok
    bad |= ~np.isfinite(times)
    if bad.any():
        raise InputError(p, f"line {lines[int(np.argmax(bad))]}: non-finite or out-of-range value "
                            f"(attributes and timestamps must be finite, |value| <= {ATTR_VALUE_LIMIT:g})")
    attrs = np.where(np.abs(wide) <= ATTR_VALUE_LIMIT, wide, 0.0).astype(np.float32)  # rows without a face: refilled below
    if np.any(np.diff(times) <= 0):
        # Non-increasing timestamps (e.g. hand-made files): fall back to even spacing.
        times = np.arange(len(times), dtype=np.float64) / float(FALLBACK_RATE)
    clip_aus(attrs)
    if file_scale != "v2":
        attrs = from_scale(attrs, file_scale)
    assert attrs.shape[1] == NUM_ATTRS
    return AttributeTable(str(p), times - times[0], ok, fill_missing(attrs, ok, times - times[0]), file_scale,
                          None if face_col is None else ids[face_index])
