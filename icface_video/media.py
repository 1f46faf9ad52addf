"""Decoding: videos and still images as one stream of RGB frames (PyAV).

A still image (jpg, png, pgm, bmp, a one-frame gif, Yale's extension-less GIF files) is a
one-frame video, so every later stage has a single interface. Decoding streams: one
frame is held at a time, whatever the clip length.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from .errors import InputError
from .outputs import file_kind

#: The frame rate assumed where an input gives none: a video stream without an average
#: rate (for frames with missing timestamps), a CSV without usable timestamps, a single
#: frame or a folder of images (``train.prepare``).
FALLBACK_RATE = Fraction(25)

# Demuxers that hold one picture (FFmpeg's image2 and the *_pipe image parsers).
_STILL_FORMATS = {"image2", "image2pipe"}


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    Attributes:
        index: 0-based position in decode order.
        time: presentation time in seconds from the stream start (real timestamps, so
            variable-frame-rate clips keep their timing).
        rgb: (H, W, 3) uint8 RGB, already rotated upright per the stream's display matrix.
        rotation: the counter-clockwise degrees that were applied to make it upright.
    """

    index: int
    time: float
    rgb: np.ndarray
    rotation: int = 0


@dataclass(frozen=True)
class MediaInfo:
    """What is known about a source before decoding it.

    Attributes:
        path: the file.
        is_still: True for a still image (decoded as exactly one frame).
        width, height: displayed size in pixels (after rotation).
        fps: average frame rate (frames/s); 0 for stills.
        frame_count: frames declared by the container (0 when unknown).
        duration: seconds (0 when unknown).
        rotation: counter-clockwise degrees applied to decoded frames.
        has_audio: True when the file carries an audio stream.
        rate: the exact frame rate as a fraction (``30000/1001``), 0 for stills and when
            unknown; :func:`nominal_rate` of the container's average and guessed rates.
    """

    path: str
    is_still: bool
    width: int
    height: int
    fps: float
    frame_count: int
    duration: float
    rotation: int
    has_audio: bool
    rate: Fraction = Fraction(0)


def file_problem(path: str | os.PathLike, what: str = "a video or image") -> str | None:
    """Why ``path`` cannot be read as an input file (``what`` names the expected kind), or None.

    Tells apart a missing file, a symbolic link loop, a directory, a special file (FIFO,
    device, socket: never opened, a FIFO would block), no read permission and an empty file.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link points back to itself)"
        if exc.errno == errno.ENOENT:
            return "no such file" if not os.path.islink(path) else "broken symbolic link (its target does not exist)"
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(st.st_mode):
        return f"is a directory, not {what}"
    if not stat.S_ISREG(st.st_mode):
        return f"is {file_kind(st.st_mode)}, not {what} file"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    if st.st_size == 0:
        return "empty file"
    return None


def _check_readable(path: Path) -> None:
    problem = file_problem(path)
    if problem:
        raise InputError(path, problem)


def _open(path: Path) -> av.container.InputContainer:
    _check_readable(path)
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(path, f"not a readable video or image ({_short(exc)})") from None
    if not container.streams.video:
        # Look at the audio streams before closing: a closed container lists none.
        kind = "audio only, no video stream" if container.streams.audio else "no video stream"
        container.close()
        raise InputError(path, f"{kind}: nothing to decode")
    return container


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # FFmpeg messages repeat the path and carry an errno prefix; keep them short.
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    return text.split(": '")[0][:120]


def probe(path: str | os.PathLike) -> MediaInfo:
    """Read a file's header (and first frames for GIFs) without decoding it all.

    Raises:
        InputError: missing, unreadable, not a video/image, no video stream, no frames.
    """
    p = Path(path)
    container = _open(p)
    try:
        stream = container.streams.video[0]
        fmt = container.format.name
        still = fmt in _STILL_FORMATS or fmt.endswith("_pipe")
        frames = iter(_decode_frames(container, p))
        first = next(frames, None)
        if first is None:
            raise InputError(p, "no decodable video frames")
        if fmt.startswith("gif"):
            still = next(frames, None) is None
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        duration = float(container.duration / av.time_base) if container.duration else 0.0
        h, w = first.rgb.shape[:2]
        rotation = first.rotation
        return MediaInfo(
            path=str(p),
            is_still=still,
            width=w,
            height=h,
            fps=0.0 if still else rate,
            frame_count=1 if still else int(stream.frames or 0),
            duration=0.0 if still else duration,
            rotation=rotation,
            has_audio=bool(container.streams.audio),
            rate=Fraction(0) if still else nominal_rate(stream.average_rate, stream.guessed_rate),
        )
    finally:
        container.close()


_NOT_CONVERTED = np.empty((0, 0, 3), np.uint8)


def _decode_frames(container: av.container.InputContainer, path: Path, convert_from: int = 0) -> Iterator[Frame]:
    """Decode every frame; those before ``convert_from`` carry an empty ``rgb`` (not converted)."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    fallback_rate = float(stream.average_rate or FALLBACK_RATE)
    index = 0
    last_time = -1.0
    try:
        for packet in container.demux(stream):
            if packet.is_corrupt:
                # A short read (truncated file): the threaded decoder would drop it silently.
                raise InputError(path, f"truncated or corrupt: decoding stopped after frame {index}")
            for vf in packet.decode():
                rot = int(round(vf.rotation or 0)) % 360
                rgb: np.ndarray = vf.to_ndarray(format="rgb24") if index >= convert_from else _NOT_CONVERTED
                if rot and rgb.size:
                    rgb = np.ascontiguousarray(np.rot90(rgb, k=rot // 90))
                t = vf.time
                if t is None or t <= last_time:
                    # Missing or non-increasing timestamps: continue from the previous one.
                    t = (last_time + 1.0 / fallback_rate) if index else 0.0
                last_time = t
                yield Frame(index=index, time=float(t), rgb=rgb, rotation=rot)
                index += 1
    except av.error.FFmpegError as exc:
        if index == 0:
            raise InputError(path, f"cannot decode video ({_short(exc)})") from None
        raise InputError(path, f"corrupt or truncated after frame {index} ({_short(exc)})") from None


def iter_frames(path: str | os.PathLike, max_frames: int | None = None, start: int = 0) -> Iterator[Frame]:
    """Stream the frames of a video or image, one at a time.

    Convention:
        yields: :class:`Frame` with ``rgb`` (H, W, 3) uint8 RGB, upright; ``time`` in
            seconds (first frame's time shifted to 0); ``index`` 0-based.
        Only frames with ``start <= index < max_frames`` are yielded; earlier frames are
            decoded but not converted (a second reader can take the second half of a clip
            with the same indices and times as one reader of the whole).
        A still image yields exactly one frame; a GIF with one frame counts as a still.

    Raises:
        InputError: missing, unreadable, corrupt, audio-only or zero-frame file.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    p = Path(path)
    info = probe(p)
    container = _open(p)
    try:
        t0: float | None = None
        count = 0
        for frame in _decode_frames(container, p, start):
            if t0 is None:
                t0 = frame.time
            if max_frames is not None and frame.index >= max_frames:
                break
            if frame.index >= start:
                yield Frame(frame.index, frame.time - t0, frame.rgb, frame.rotation)
            count += 1
            if info.is_still or (max_frames is not None and count >= max_frames):
                break
        if count == 0:
            raise InputError(p, "no decodable video frames")
    finally:
        container.close()


def load_image(path: str | os.PathLike) -> np.ndarray:
    """The first frame of an image or video as (H, W, 3) uint8 RGB."""
    return next(iter_frames(path, max_frames=1)).rgb


# -- frame rates and timelines ---------------------------------------------------------------

#: Frame rates that editing software expects exactly (NTSC rates as n*1000/1001).
STANDARD_RATES: tuple[Fraction, ...] = tuple(
    [Fraction(r) for r in (12, 15, 24, 25, 30, 48, 50, 60, 72, 90, 100, 120)]
    + [Fraction(r * 1000, 1001) for r in (24, 30, 48, 60, 120)])


def exact_rate(value: float | Fraction | str, tolerance: float = 1e-5) -> Fraction:
    """A frame rate as an exact fraction.

    A Fraction or an ``"N/D"`` string is kept as given. A float within ``tolerance``
    (relative) of a standard rate becomes that rate (29.97003 -> 30000/1001); any other
    float becomes the nearest fraction with a denominator up to 1001. The default
    tolerance (1e-5: under one frame of drift in an hour) suits container rates; rates
    estimated from rounded timestamps (CSV drivers) pass a looser one.

    Raises:
        ValueError: not a positive finite number.
    """
    if isinstance(value, str):
        try:
            value = Fraction(value)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"frame rate: expected a number or N/D, got {value!r}") from None
    if isinstance(value, Fraction):
        if value <= 0:
            raise ValueError(f"frame rate: expected > 0, got {value}")
        return value
    v = float(value)
    if not (0 < v < float("inf")):
        raise ValueError(f"frame rate: expected a positive number, got {value!r}")
    best = min(STANDARD_RATES, key=lambda r: abs(float(r) - v))
    if abs(float(best) - v) <= tolerance * v:
        return best
    return Fraction(v).limit_denominator(1001)


def nominal_rate(average: Fraction | None, guessed: Fraction | None = None) -> Fraction:
    """The rate a clip is meant to play at, exact.

    Each rate within 0.001% of a standard rate is snapped to it (an average computed from
    a duration, such as 2997/100, becomes 30000/1001). The average rate is taken when it
    is standard; else FFmpeg's guessed rate (the rate its timestamps are on) when that is
    standard (a variable-rate clip with dropped frames: average 23.4, guessed 30000/1001);
    else the average, else the guess. 0 when neither is known.
    """
    rates = [Fraction(r) for r in (average, guessed) if r and r > 0]
    snapped = [exact_rate(float(r)) for r in rates]
    for _r, s in zip(rates, snapped):
        if s in STANDARD_RATES:
            return s
    return rates[0] if rates else Fraction(0)


def rate_from_times(times: np.ndarray, tolerance: float = 2e-3) -> Fraction:
    """The frame rate of a timeline, exact: (N - 1) frames over its span, snapped to a
    standard rate within ``tolerance`` (relative; the default suits rounded timestamps such
    as a CSV's, :func:`exact_rate`); :data:`FALLBACK_RATE` for fewer than two frames or a
    zero span.

    Convention: times (N,) seconds, increasing.
    """
    n = len(times)
    span = float(times[-1] - times[0]) if n >= 2 else 0.0
    return exact_rate((n - 1) / span, tolerance) if span > 0 else FALLBACK_RATE


def is_variable_rate(times: np.ndarray, rate: Fraction | float) -> bool:
    """True when frame times drift from ``index / rate`` by more than half a frame.

    Convention: times (N,) seconds from the first frame; rate frames/s > 0.
    """
    t = np.asarray(times, np.float64)
    if len(t) < 2:
        return False
    uniform = t[0] + np.arange(len(t)) / float(rate)
    return bool(np.abs(t - uniform).max() > 0.5 / float(rate))


def uniform_times(times: np.ndarray, rate: Fraction | float) -> np.ndarray:
    """(M,) ``k / rate`` (from ``times[0]``) covering the same span as ``times``: a
    variable-rate timeline resampled to a constant rate, so frame k is shown at its own
    time and audio and picture stay in step. M = round(span * rate) + 1."""
    t = np.asarray(times, np.float64)
    if len(t) == 0:
        return t
    m = int(round((t[-1] - t[0]) * float(rate))) + 1
    return t[0] + np.arange(m, dtype=np.float64) / float(rate)


def rate_json(rate: Fraction | float) -> dict:
    """A frame rate for ``--json``: ``{"fps": "30000/1001", "fps_float": 29.97003}``."""
    r = rate if isinstance(rate, Fraction) else exact_rate(rate)
    return {"fps": f"{r.numerator}/{r.denominator}", "fps_float": round(float(r), 6)}
