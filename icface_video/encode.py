"""Encoding: RGB frames -> H.264 MP4 through an ffmpeg process (ffmpeg-python).

The ffmpeg binary is the system's ``ffmpeg`` if present, else the one shipped by the
``imageio-ffmpeg`` package, so a pip-only install can encode. Frames are piped raw;
audio can be copied from another file. The caller writes to a temporary name
(:func:`icface_video.outputs.atomic_output`).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import IcfaceError

# ffmpeg processes this process has running (killed by :func:`kill_encoders` when the
# process must stop at once: a batch worker whose parent died).
_LIVE: set[subprocess.Popen] = set()


def kill_encoders() -> None:
    """Kill every ffmpeg process this process started and has not finished."""
    for proc in list(_LIVE):
        try:
            proc.kill()
        except OSError:
            pass


def ffmpeg_exe() -> str:
    """Path of an ffmpeg binary.

    Raises:
        IcfaceError: neither a system ffmpeg nor the imageio-ffmpeg package is available.
    """
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        raise IcfaceError(
            "ffmpeg not found: install it (apt install ffmpeg) or `pip install imageio-ffmpeg`"
        ) from None


@dataclass(frozen=True)
class EncodeConfig:
    """H.264 settings.

    Attributes:
        crf: constant rate factor, 0 (lossless) .. 51; 18 is visually lossless.
        preset: x264 speed preset (ultrafast .. veryslow).
        audio: copy the first audio stream of ``VideoEncoder.audio_from`` when present.
    """

    crf: int = 18
    preset: str = "medium"
    audio: bool = True


class VideoEncoder:
    """Pipe (H, W, 3) uint8 RGB frames into ffmpeg -> yuv420p H.264 MP4.

    Width and height must be even (yuv420p); :func:`even_size` rounds down. ``duration``
    (seconds) cuts the copied audio to the video's length.
    Use as a context manager; on error the ffmpeg process is killed.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float,
                 config: EncodeConfig = EncodeConfig(), audio_from: str | Path | None = None,
                 duration: float | None = None) -> None:
        import ffmpeg

        if width % 2 or height % 2 or width <= 0 or height <= 0:
            raise ValueError(f"width/height: expected positive even numbers, got {width}x{height}")
        if not fps > 0:
            raise ValueError(f"fps: expected > 0, got {fps}")
        self.width, self.height = width, height
        video = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}",
                             framerate=f"{fps:.6f}")
        streams = [video]
        out_args = dict(vcodec="libx264", pix_fmt="yuv420p", crf=config.crf, preset=config.preset,
                        movflags="+faststart")
        if audio_from is not None and config.audio:
            # Audio is cut at the video's duration; if it is shorter, the video goes on silent
            # (never -shortest: that would drop video frames).
            audio = (ffmpeg.input(str(audio_from), t=f"{duration:.6f}") if duration else ffmpeg.input(str(audio_from))).audio
            streams.append(audio)
            out_args.update(acodec="aac")
        stream = ffmpeg.output(*streams, str(path), format="mp4", **out_args).global_args(
            "-hide_banner", "-loglevel", "error", "-nostdin")
        cmd = stream.overwrite_output().compile(cmd=ffmpeg_exe())
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        _LIVE.add(self._proc)
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        """Append one frame, (H, W, 3) uint8 RGB of the encoder's size."""
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"rgb: expected ({self.height}, {self.width}, 3) uint8, got {rgb.shape} {rgb.dtype}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(rgb).tobytes())
        except BrokenPipeError:
            self._fail()
        self.frames += 1

    def _fail(self) -> None:
        err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
        self._proc.kill()
        self._proc.wait()
        _LIVE.discard(self._proc)
        last = err.splitlines()[-1] if err else f"exit code {self._proc.poll()}"
        raise IcfaceError(f"ffmpeg failed: {last}")

    def close(self) -> None:
        """Finish the file; raises IcfaceError when ffmpeg reports a failure (e.g. disk full)."""
        if self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
        code = self._proc.wait()
        _LIVE.discard(self._proc)
        if code != 0:
            raise IcfaceError(f"ffmpeg failed: {err.splitlines()[-1] if err else 'exit code ' + str(self._proc.returncode)}")

    def __enter__(self) -> "VideoEncoder":
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._proc.kill()
            self._proc.wait()
            _LIVE.discard(self._proc)


def even_size(width: int, height: int) -> tuple[int, int]:
    """Round a size down to even numbers (yuv420p needs them), at least 2x2."""
    return max(2, width - width % 2), max(2, height - height % 2)
