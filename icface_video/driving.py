"""Driving signals: attribute tracks from videos or CSVs, combined per face region.

A :class:`AttributeTrack` is a timed (N, 20) attribute sequence. :func:`compose` builds
the per-output-frame attributes of a reenactment from the source's own attributes, a
main driver, optional part drivers (pose / expression / eyes / mouth / brows) and the
mode, in relative or absolute terms. Presets and ``--set`` overrides are applied after
(:mod:`icface_video.controls`).

Length rule: the output follows the *primary* driver's timeline (``--driving``, else the
first part driver given). Other drivers are sampled at the same times from their own
start, holding their last value when shorter and cut when longer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from .attributes import NUM_AUS, AttributeSeries, clip_aus
from .controls import REGIONS
from .csvio import AttributeTable, read_attributes_csv
from .smoothing import SmoothConfig
from .track import FaceTrack, analyze_media, smooth_attributes

Mode = Literal["full", "pose", "expression"]
MODES: tuple[str, ...] = ("full", "pose", "expression")
PARTS: tuple[str, ...] = ("pose", "expression", "eyes", "mouth", "brows")
# Lips cannot part while pressed: the mouth openers and the AUs that hold the lips shut
# (chin raiser, lip tightener/pressor). In relative driving the source's own resting
# closers are released as the planned opening rises, fully at RELEASE_AT AU units of
# opening; otherwise a source that rests with AU17/AU23 high keeps its mouth shut
# whatever the driver does (the generator learned that pressed lips stay closed).
OPENERS: tuple[str, ...] = ("AU25", "AU26")
CLOSERS: tuple[str, ...] = ("AU17", "AU23")
RELEASE_AT = 2.0


def most_neutral_frame(attrs: np.ndarray, success: np.ndarray, columns: np.ndarray | None = None) -> int:
    """The index of the most neutral frame: least AU activity / 5 plus head-angle magnitude /
    0.35 rad over ``columns`` (indices into the 20-vector; None: all), among frames where a
    face was measured.

    Convention: attrs (N, 20) AUs 0..5 then radians; success (N,) bool.
    """
    cols = np.arange(attrs.shape[1]) if columns is None else np.asarray(columns, np.int64)
    aus, angles = cols[cols < NUM_AUS], cols[cols >= NUM_AUS]
    score = attrs[:, aus].sum(axis=1) / 5.0 + np.abs(attrs[:, angles]).sum(axis=1) / 0.35
    return int(np.argmin(np.where(success, score, np.inf)))


@dataclass(frozen=True)
class AttributeTrack(AttributeSeries):
    """A timed attribute sequence: the driving-signal stage.

    Made from a measured clip (:meth:`from_face_track`, a :class:`FaceTrack`) or from an
    attribute CSV (:meth:`from_table`, an :class:`AttributeTable`): smoothed, on an exact
    frame rate, and sampled at the output's frame times (:meth:`sample`) by :func:`compose`.

    Attributes:
        path: where it came from.
        times: (N,) seconds from the first frame.
        attrs: (N, 20) AUs 0..5, angles radians, smoothed and gap-filled.
        success: (N,) bool, where a face was measured.
        fps: frame rate of the timeline, exact (the video's, e.g. 30000/1001, or
            estimated from CSV timestamps and snapped to a standard rate within 0.2%).
        is_video: True when decoded from a video (it may carry audio and frames).
        has_audio: the file has an audio stream.
        heads: (N, 3) the head's centre x, y and size in the driver's frame, pixels
            (:func:`icface_video.align.landmark_params`, smoothed), for videos; None for CSVs.
    """

    path: str
    times: np.ndarray
    attrs: np.ndarray
    success: np.ndarray
    fps: Fraction
    is_video: bool = False
    has_audio: bool = False
    heads: np.ndarray | None = None

    @classmethod
    def from_face_track(cls, track: FaceTrack, smoothing: SmoothConfig = SmoothConfig()) -> "AttributeTrack":
        """A driver from a measured video or photo: its attributes smoothed with ``smoothing``,
        its exact rate, and its head positions (smoothed crop params)."""
        return cls(track.info.path, track.times, track.attributes(smoothing), track.success, track.rate,
                   is_video=not track.info.is_still, has_audio=track.info.has_audio,
                   heads=track.smoothed_crop_params().astype(np.float64))

    @classmethod
    def from_table(cls, table: AttributeTable, smoothing: SmoothConfig = SmoothConfig()) -> "AttributeTrack":
        """A driver from an attribute CSV: its attributes smoothed with ``smoothing`` on the rate
        of its timestamps (no head positions: a CSV has none)."""
        return cls(table.path, table.times, smooth_attributes(table.attrs, table.times, smoothing), table.success,
                   table.fps)

    def sample(self, times: np.ndarray) -> np.ndarray:
        """(M, 20) attributes at ``times`` (s), linear in time, held past either end."""
        t = np.asarray(times, np.float64)
        out = np.empty((len(t), self.attrs.shape[1]), np.float32)
        for d in range(self.attrs.shape[1]):
            out[:, d] = np.interp(t, self.times, self.attrs[:, d])
        return out

    def reference_index(self, columns: np.ndarray | None = None) -> int:
        """The most neutral frame for ``columns`` (:func:`most_neutral_frame`)."""
        return most_neutral_frame(self.attrs, self.success, columns)

    def reference(self, columns: np.ndarray | None = None) -> np.ndarray:
        """(20,) the most neutral frame for ``columns`` (:meth:`reference_index`).

        "Most neutral" is the least activity over those columns only: AU intensity / 5 plus
        head-angle magnitude / 0.35 rad, over frames where a face was measured. Relative
        driving takes changes against this frame, so a part driver (``--mouth-from``) has
        its own reference: its most closed-mouth frame, whatever its brows or pose do then.
        """
        return self.attrs[self.reference_index(columns)].copy()

    def placement(self, times: np.ndarray, source_size: float) -> np.ndarray | None:
        """(M, 3) the head's shift (dx, dy) and scale factor at ``times`` against the
        reference frame of the pose (the most neutral head angles), with the shift in the
        units of a source head of size ``source_size`` pixels; None when the track has no
        head positions (a CSV)."""
        if self.heads is None:
            return None
        t = np.asarray(times, np.float64)
        h = np.stack([np.interp(t, self.times, self.heads[:, d]) for d in range(3)], axis=1)
        ref = self.heads[self.reference_index(region_columns("pose"))]
        k = source_size / max(float(ref[2]), 1e-6)
        return np.stack([(h[:, 0] - ref[0]) * k, (h[:, 1] - ref[1]) * k, h[:, 2] / max(float(ref[2]), 1e-6)], 1)


def load_track(path: str | os.PathLike, smoothing: SmoothConfig = SmoothConfig(), face_index: int = 0,
               progress: Callable[[int, int], None] | None = None) -> AttributeTrack:
    """Attributes of a driving video or an attribute CSV (ours or OpenFace 2.x).

    A ``.csv`` file is read as attributes (and smoothed with ``smoothing`` too; its
    face ``face_index``: 0 = the smallest face id in the file); anything else is decoded
    and analysed (``face_index``: 0 = the largest face).

    Raises:
        InputError: unreadable file, bad CSV, or no face in any frame.
    """
    p = Path(path)
    if p.suffix.lower() == ".csv":
        return AttributeTrack.from_table(read_attributes_csv(p, face_index=face_index), smoothing)
    return AttributeTrack.from_face_track(analyze_media(p, face_index=face_index, progress=progress), smoothing)


def region_columns(region: str) -> np.ndarray:
    """Column indices (into the 20-vector) of a region: pose, expression, eyes, mouth, brows."""
    from .controls import attr_index

    return np.array([attr_index(n) for n in REGIONS[region]], np.int64)


def compose(source: np.ndarray, times: np.ndarray, main: AttributeTrack | None, parts: dict[str, AttributeTrack],
            mode: Mode = "full", relative: bool = True) -> np.ndarray:
    """Per-output-frame attributes from the source and the drivers.

    Args:
        source: (20,) the source photo's attributes, or (N, 20) per output frame for a
            source clip.
        times: (N,) output times in seconds.
        main: the main driver (``--driving``) or None.
        parts: region name (``PARTS``) -> driver for that region; applied after ``main``
            in the order pose, expression, brows, eyes, mouth (finer regions win).
        mode: which regions the main driver drives: ``full`` (all), ``pose``, ``expression``.
        relative: apply each driver's change from its most neutral frame to the source's
            own values (keeps the source's face shape and resting expression); else copy
            the driver's values. Each driver's neutral frame is chosen per face region
            (brows, eyes, mouth, pose; :meth:`AttributeTrack.reference`): the mouth's
            change is taken from its most closed mouth, the pose's from its most frontal
            head, whatever the rest of the face does in those frames. As the planned lips part
            (``OPENERS`` above the source's own), the source's resting ``CLOSERS`` are
            released in proportion (fully at ``RELEASE_AT``); the driver's own changes
            of them are kept.

    Returns:
        (N, 20) float32; AUs clipped to 0..5.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"parts: unknown region(s) {sorted(unknown)} (expected {PARTS})")
    n = len(times)
    base = np.broadcast_to(np.asarray(source, np.float32), (n, source.shape[-1])).copy()
    out = base.copy()
    driven = np.zeros(base.shape[1], bool)

    def drive(track: AttributeTrack, cols: np.ndarray) -> None:
        values = track.sample(times)[:, cols]
        if relative:
            # Each face region's change is taken from the driver's most neutral frame for
            # that region (its most closed mouth, its most frontal head, ...).
            ref = np.empty(len(cols), np.float32)
            for region in ("brows", "eyes", "mouth", "pose"):
                inside = np.isin(cols, region_columns(region))
                if inside.any():
                    ref[inside] = track.reference(cols[inside])[cols[inside]]
            values = base[:, cols] + (values - ref)
        out[:, cols] = values
        driven[cols] = True

    if main is not None:
        drive(main, np.arange(base.shape[1]) if mode == "full" else region_columns(mode))
    for region in ("pose", "expression", "brows", "eyes", "mouth"):
        if region in parts:
            drive(parts[region], region_columns(region))
    if relative:
        from .controls import attr_index

        openers = [attr_index(n) for n in OPENERS]
        closers = [c for c in (attr_index(n) for n in CLOSERS) if driven[c]]
        if closers and driven[openers].any():
            opening = np.clip((out[:, openers] - base[:, openers]).max(axis=1), 0.0, None)
            release = np.clip(opening / RELEASE_AT, 0.0, 1.0)[:, None]
            out[:, closers] -= release * base[:, closers]
    clip_aus(out)
    return out
