"""Attribute CSV files: writing OpenFace 2.x-style rows, reading ours or OpenFace's.

Columns written (one row per decoded frame)::

    frame, timestamp, confidence, success, pose_Rx, pose_Ry, pose_Rz, AU01_r, ..., AU45_r
    [bs_<name> x 52]                      with blendshapes
    [x_0..x_477, y_0..y_477, z_0..z_477]  with landmarks (full-frame pixels)

``frame`` is 1-based, ``timestamp`` in seconds, ``pose_R*`` in radians (OpenFace
convention, see :mod:`icface_video.attributes`), AUs 0..5. OpenFace 2.x files have the
same names with a space after each comma and 700+ columns; the reader takes both.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .attributes import AU_NAMES, BLENDSHAPE_NAMES, NUM_ATTRS, NUM_AUS
from .errors import InputError
from .smoothing import fill_missing

POSE_COLUMNS = ("pose_Rx", "pose_Ry", "pose_Rz")
AU_COLUMNS = tuple(f"{au}_r" for au in AU_NAMES)
BASE_COLUMNS = ("frame", "timestamp", "confidence", "success") + POSE_COLUMNS + AU_COLUMNS


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
        header += [f"{axis}_{i}" for axis in "xyz" for i in range(k)]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for i in range(n):
            a = attrs[i]
            row = [str(i + 1), f"{times[i]:.4f}", f"{confidence[i]:.3f}", str(int(success[i]))]
            row += [_fmt(v) for v in a[NUM_AUS:]] + [f"{v:.3f}" for v in a[:NUM_AUS]]
            if blendshapes is not None:
                row += [_fmt(v) for v in blendshapes[i]]
            if landmarks is not None:
                row += [f"{v:.2f}" for v in landmarks[i].T.reshape(-1)]
            writer.writerow(row)


@dataclass(frozen=True)
class AttributeTable:
    """Attributes read from a CSV file.

    Attributes:
        times: (N,) seconds; success: (N,) bool; attrs: (N, 20) with rows that had no
            face filled from neighbours; path: the file.
    """

    path: str
    times: np.ndarray
    success: np.ndarray
    attrs: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.times.shape[0])

    @property
    def fps(self) -> float:
        if self.num_frames < 2:
            return 25.0
        span = float(self.times[-1] - self.times[0])
        return (self.num_frames - 1) / span if span > 0 else 25.0


ATTR_VALUE_LIMIT = 1e6  # larger AU or angle values (radians) are not measurements


def read_attributes_csv(path: str | os.PathLike) -> AttributeTable:
    """Read an attribute CSV written by ``icface-video extract`` or by OpenFace 2.x.

    Only the pose and AU intensity columns are required; ``timestamp`` defaults to
    frame / 25 s and ``success`` to 1. With several faces per frame (OpenFace's
    ``face_id``), face 0 is used.

    Raises:
        InputError: missing file, not a CSV, missing columns, non-numeric values, no rows,
            or no row with success = 1.
    """
    from .media import file_problem

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
            rows_t, rows_ok, rows_a, lines = [], [], [], []
            for line_no, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                if "face_id" in col and row[col["face_id"]].strip() not in ("0", "0.0"):
                    continue
                try:
                    rows_a.append([float(row[i]) for i in want])
                    rows_t.append(float(row[col["timestamp"]]) if "timestamp" in col else (len(rows_t)) / 25.0)
                    rows_ok.append(float(row[col["success"]]) > 0.5 if "success" in col else True)
                    lines.append(line_no)
                except (ValueError, IndexError):
                    raise InputError(p, f"line {line_no}: missing or non-numeric value") from None
    except UnicodeDecodeError:
        raise InputError(p, "not a text CSV file") from None
    if not rows_a:
        raise InputError(p, "no data rows")
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
        times = np.arange(len(times), dtype=np.float64) / 25.0
    attrs[:, :NUM_AUS] = np.clip(attrs[:, :NUM_AUS], 0.0, 5.0)
    assert attrs.shape[1] == NUM_ATTRS
    return AttributeTable(str(p), times - times[0], ok, fill_missing(attrs, ok, times - times[0]))
