"""Encoding: RGB frames -> H.264 or ProRes video, or a PNG sequence, through an ffmpeg
process (ffmpeg-python).

The output's extension decides the container (:func:`output_format`: .mp4, .mov, .mkv,
``frames/%05d.png``); anything else is a usage error. Video is tagged BT.709 (primaries,
transfer, matrix) with limited range, and converted from RGB with that matrix. The frame
rate stays an exact fraction (30000/1001 in, 30000/1001 out).

The ffmpeg binary is the system's ``ffmpeg`` if present, else the one shipped by the
``imageio-ffmpeg`` package, so a pip-only install can encode. Frames are piped raw;
audio can be copied from another file. The caller writes to a temporary name
(:func:`icface_video.outputs.atomic_output`).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import IcfaceError, UsageError
from .runtime import spawning

# ffmpeg processes this process has running (killed by :func:`kill_encoders` when the
# process must stop at once: a batch worker whose parent died).
_LIVE: set[subprocess.Popen] = set()


def kill_encoders() -> None:
    """Kill every ffmpeg process this process started and has not finished (a cleanup of
    :func:`icface_video.runtime.halt`)."""
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


#: Video containers written, by file extension (ffmpeg muxer names).
CONTAINERS: dict[str, str] = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
#: Video codecs offered by ``--codec``.
CODECS: tuple[str, ...] = ("h264", "prores")
SUPPORTED_OUTPUTS = ".mp4, .mov, .mkv, or an image sequence such as frames/%05d.png"


@dataclass(frozen=True)
class EncodeConfig:
    """Encoder settings.

    Attributes:
        crf: constant rate factor, 0 (lossless) .. 51; 18 is visually lossless (H.264).
        preset: x264 speed preset (ultrafast .. veryslow).
        audio: copy the first audio stream of ``VideoEncoder.audio_from`` when present.
        codec: ``h264`` (yuv420p, the default) or ``prores`` (ProRes 422 HQ, 10 bit; with
            ``alpha`` ProRes 4444 with an alpha channel); ignored for image sequences (PNG).
        alpha: write the face mask as an alpha channel (ProRes 4444 or an RGBA PNG
            sequence); frames are then written with :meth:`VideoEncoder.write`'s ``alpha``.
    """

    crf: int = 18
    preset: str = "medium"
    audio: bool = True
    codec: str = "h264"
    alpha: bool = False


@dataclass(frozen=True)
class OutputFormat:
    """What an output path and the codec settings write (:func:`output_format`).

    Attributes:
        muxer: ffmpeg muxer: ``mp4``, ``mov``, ``matroska`` or ``image2`` (a sequence).
        codec: ``h264``, ``prores`` or ``png``.
        alpha: frames carry an alpha channel.
        audio_codec: ``aac``, ``pcm_s16le`` (ProRes, for editing) or None (no audio:
            image sequences).
    """

    muxer: str
    codec: str
    alpha: bool
    audio_codec: str | None

    @property
    def sequence(self) -> bool:
        return self.muxer == "image2"


# H.264's largest frame (level 6.2): 139264 macroblocks of 16x16 pixels (8192x4320 fits), at
# most 8192 pixels a side here; ProRes (prores_ks) takes up to 16384 a side.
H264_MAX_MACROBLOCKS = 139264
LARGE_FRAME = 2560 * 1440  # pixels: above this, x264's lookahead and threads are capped
MAX_SIDE = {"h264": 8192, "prores": 16384, "png": 32767}


def frame_size_problem(fmt: OutputFormat, width: int, height: int) -> str | None:
    """Why frames of ``width`` x ``height`` cannot be written in ``fmt`` (None: they can)."""
    side = MAX_SIDE.get(fmt.codec, 16384)
    mbs = -(-width // 16) * -(-height // 16)
    if max(width, height) > side or (fmt.codec == "h264" and mbs > H264_MAX_MACROBLOCKS):
        return (f"{width}x{height} frames are larger than {fmt.codec} can encode (at most {side} pixels a side"
                + (", 8192x4320 in all" if fmt.codec == "h264" else "")
                + "); use a smaller source" + (", --codec prores or an image sequence" if fmt.codec == "h264" else ""))
    return None


def output_format(path: str | Path, codec: str = "h264", alpha: bool = False) -> OutputFormat:
    """The container and codec for an output path: the extension decides the container.

    ``.mp4`` ``.mov`` ``.mkv`` hold H.264 (``.mov`` ``.mkv`` also ProRes); a file name
    with one frame number (``frames/%05d.png``) is a PNG image sequence.

    Raises:
        UsageError: any other extension, ProRes in .mp4, ``alpha`` without ProRes or PNG,
            an unknown codec; the message names the supported outputs.
    """
    from .outputs import is_sequence

    p = Path(path)
    if codec not in CODECS:
        raise UsageError(f"--codec {codec}: expected one of {', '.join(CODECS)}")
    suffix = p.suffix.lower()
    if is_sequence(p):
        if suffix != ".png":
            raise UsageError(f"{path}: an image sequence is written as PNG (e.g. frames/%05d.png), "
                             f"not {suffix or 'no extension'}")
        if codec != "h264":
            raise UsageError(f"{path}: --codec {codec} writes a video file (.mov or .mkv), not an image sequence")
        return OutputFormat("image2", "png", alpha, None)
    if suffix not in CONTAINERS:
        raise UsageError(f"{path}: cannot write {suffix or 'a file without an extension'} "
                         f"(supported: {SUPPORTED_OUTPUTS})")
    if codec == "prores":
        if suffix == ".mp4":
            raise UsageError(f"{path}: ProRes is written to .mov or .mkv, not .mp4")
        return OutputFormat(CONTAINERS[suffix], "prores", alpha, "pcm_s16le")
    if alpha:
        raise UsageError(f"{path}: --alpha needs --codec prores (ProRes 4444) or a PNG sequence; H.264 has no alpha")
    return OutputFormat(CONTAINERS[suffix], "h264", False, "aac")


#: BT.709 colour tags (primaries, transfer, matrix) and limited ("tv") range, written on
#: every H.264 and ProRes output; the RGB -> YUV conversion uses the same matrix and range.
COLOR_TAGS = {"color_primaries": "bt709", "color_trc": "bt709", "colorspace": "bt709", "color_range": "tv"}


class VideoEncoder:
    """Pipe (H, W, 3) uint8 RGB frames into ffmpeg: H.264 (yuv420p) or ProRes in
    .mp4/.mov/.mkv, or a PNG image sequence; the path's extension decides
    (:func:`output_format`).

    Width and height must be even (yuv420p); :func:`even_size` rounds down. ``fps`` is
    kept exact (a Fraction such as 30000/1001; a float is snapped with
    :func:`icface_video.media.exact_rate`). Audio is taken from ``audio_from`` starting at
    ``audio_start`` seconds and cut at ``duration`` seconds (the video's length).
    Use as a context manager; on error the ffmpeg process is killed.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: Fraction | float,
                 config: EncodeConfig = EncodeConfig(), audio_from: str | Path | None = None,
                 duration: float | None = None, audio_start: float = 0.0) -> None:
        import ffmpeg

        from .media import exact_rate

        if width % 2 or height % 2 or width <= 0 or height <= 0:
            raise ValueError(f"width/height: expected positive even numbers, got {width}x{height}")
        if not fps > 0:
            raise ValueError(f"fps: expected > 0, got {fps}")
        self.format = output_format(path, config.codec, config.alpha)
        self.fps = exact_rate(fps)
        self.width, self.height = width, height
        self.alpha = self.format.alpha
        fmt = self.format
        video = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgba" if self.alpha else "rgb24",
                             s=f"{width}x{height}", framerate=f"{self.fps.numerator}/{self.fps.denominator}")
        if fmt.codec == "png":
            out_args = dict(vcodec="png", pix_fmt="rgba" if self.alpha else "rgb24", start_number=1)
        else:
            # Convert with the BT.709 matrix to limited range, and mark the frames so (the
            # encoder takes the tags from the frames; the output options repeat them).
            video = video.filter("scale", out_color_matrix="bt709", out_range="tv").filter(
                "setparams", color_primaries="bt709", color_trc="bt709", colorspace="bt709", range="tv")
            if fmt.codec == "prores":
                out_args = {"vcodec": "prores_ks", "profile:v": 4 if self.alpha else 3,
                            "pix_fmt": "yuva444p10le" if self.alpha else "yuv422p10le", "vendor": "apl0"}
                if self.alpha:
                    out_args["alpha_bits"] = 16
            else:
                out_args = dict(vcodec="libx264", pix_fmt="yuv420p", crf=config.crf, preset=config.preset)
                if width * height > LARGE_FRAME:
                    # x264 holds its lookahead and reference frames: cap them (and its
                    # threads) for large frames, so the encoder's memory stays bounded.
                    out_args.update({"x264-params": "rc-lookahead=4:sync-lookahead=0:ref=1:bframes=0", "threads": 2})
            out_args.update(COLOR_TAGS)
            if fmt.muxer in ("mp4", "mov"):
                out_args["movflags"] = "+faststart"
        streams = [video]
        if audio_from is not None and config.audio and fmt.audio_codec:
            # Audio is cut at the video's duration; if it is shorter, the video goes on silent
            # (never -shortest: that would drop video frames).
            cut = {"ss": f"{audio_start:.6f}"} if audio_start > 0 else {}
            if duration:
                cut["t"] = f"{duration:.6f}"
            streams.append(ffmpeg.input(str(audio_from), **cut).audio)
            out_args.update(acodec=fmt.audio_codec)
        stream = ffmpeg.output(*streams, str(path), format=fmt.muxer, **out_args).global_args(
            "-hide_banner", "-loglevel", "error", "-nostdin")
        cmd = stream.overwrite_output().compile(cmd=ffmpeg_exe())
        with spawning():  # a halting process (a batch worker whose parent died) starts none
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            _LIVE.add(self._proc)
        self.frames = 0

    def write(self, rgb: np.ndarray, alpha: np.ndarray | None = None) -> None:
        """Append one frame, (H, W, 3) uint8 RGB of the encoder's size; with an alpha
        format also ``alpha``, (H, W) uint8 (255 opaque: the face), else it is ignored."""
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"rgb: expected ({self.height}, {self.width}, 3) uint8, got {rgb.shape} {rgb.dtype}")
        if self.alpha:
            if alpha is None or alpha.shape != (self.height, self.width) or alpha.dtype != np.uint8:
                got = "None" if alpha is None else f"{alpha.shape} {alpha.dtype}"
                raise ValueError(f"alpha: expected ({self.height}, {self.width}) uint8, got {got}")
            rgb = np.concatenate([rgb, alpha[..., None]], axis=2)
        stdin = self._proc.stdin
        assert stdin is not None  # opened with stdin=PIPE
        try:
            stdin.write(np.ascontiguousarray(rgb).tobytes())
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
