"""The studio's state and actions, without HTTP: one source photo, an optional driving
clip, slider values, and what they become (a preview, a preset, keyframes, a command
line, a video).

Every render goes through the package's own pieces, so the page shows what the command
line makes: slider values become ``--set`` expressions (:func:`set_expressions`) that are
parsed with :func:`icface_video.controls.parse_set` and applied with
:func:`~icface_video.controls.apply_ops`; a driving clip is composed with
:func:`icface_video.driving.compose` (the ``reenact`` options ``--mode``, ``--pose-from``
..., ``--relative``, ``--smooth``); frames are drawn by the default geometric renderer
(:class:`icface_video.geo_render.GeometryStage`, as ``edit``); a whole video goes through
:func:`icface_video.api.reenact` (with a clip) or the ``animate`` pipeline (keyframes from
:mod:`icface_video.keyframes`, :func:`icface_video.reenact.render_video`).

Slider values (``values``) are a dict of attribute name -> number: AUs on the calibrated
0..5 scale, angles in **degrees** (the page's unit). Without a clip the values are
absolute (``--set AU12=4``); with a clip each slider's difference from the source's own
value is an offset on top of the driven value (``--set AU12+=1.5``).
"""

from __future__ import annotations

import math
import re
import shlex
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..attributes import ATTR_NAMES, AU_DESCRIPTIONS, AU_NAMES, NUM_AUS, from_scale
from ..controls import REGIONS, apply_ops, parse_set
from ..errors import InputError, UsageError

if TYPE_CHECKING:
    from ..driving import Mode
    from ..smoothing import SmoothMethod
    from ..source import SourceFrame
    from ..track import FaceTrack

#: Face regions of the sliders, in page order (``controls.REGIONS``).
SLIDER_REGIONS: tuple[str, ...] = ("brows", "eyes", "mouth", "pose")
ANGLE_RANGE_DEG = 45.0
#: Parts a driving clip may drive (page toggles), as ``controls.REGIONS`` names.
DRIVE_PARTS: tuple[str, ...] = ("pose", "brows", "eyes", "mouth")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def slider_definitions() -> list[dict]:
    """The 20 sliders: name, words, region, range, step, unit, and for AUs ``model_top``:
    the calibrated value above which the shipped models read the same (the scale's top)."""
    tops = from_scale(np.full((1, NUM_AUS), 5.0, np.float32), "v1")[0]
    out = []
    for region in SLIDER_REGIONS:
        for name in REGIONS[region]:
            if name in AU_NAMES:
                j = AU_NAMES.index(name)
                out.append({"name": name, "label": AU_DESCRIPTIONS[name], "region": region, "min": 0.0,
                            "max": 5.0, "step": 0.05, "unit": "", "model_top": round(float(tops[j]), 2)})
            else:
                out.append({"name": name, "label": f"head {name}", "region": region, "min": -ANGLE_RANGE_DEG,
                            "max": ANGLE_RANGE_DEG, "step": 0.5, "unit": "deg", "model_top": None})
    return out


def drive_controls() -> list[dict]:
    """The drive-from-clip controls the page builds its widgets from: the parts toggles,
    then ``relative``, ``smooth`` and ``smooth_strength`` from the reenact options' one
    definition (:func:`icface_video.options.describe`: flag, help, choices, range)."""
    from ..options import describe

    out = [{"name": "parts", "flag": "--mode / --pose-from --brows-from --eyes-from --mouth-from", "kind": "multi",
            "choices": list(DRIVE_PARTS), "default": list(DRIVE_PARTS), "help": "Which parts the clip drives."}]
    for d in describe(["relative", "smooth", "smooth_strength"]):
        c = {"name": d["name"], "flag": "--relative/--absolute" if d["name"] == "relative" else d["flag"],
             "kind": d["type"], "default": d["default"], "help": d["help"]}
        if d["name"] == "relative":
            c["default"] = True  # the options' None means "relative for photos": the studio's source is a photo
        if d["choices"]:
            c["choices"] = d["choices"]
        if d["range"]:
            c.update(min=d["range"][0], max=d["range"][1], step=0.1)
        out.append(c)
    return out


def safe_name(name: object, suffix: str) -> str:
    """A plain file name ``NAME`` + ``suffix`` for files the studio writes (no folders, no
    leading dot). Raises UsageError otherwise."""
    text = str(name or "").strip()
    if text.lower().endswith(suffix):
        text = text[: -len(suffix)]
    if not NAME_RE.fullmatch(text):
        raise UsageError(f"name {str(name)!r}: use letters, digits, '.', '_' or '-' (no folders), up to 64")
    return text + suffix


def _number(values: dict, name: str) -> float:
    v = values.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise UsageError(f"values.{name}: expected a number, got {v!r}")
    return float(v)


def slider_values(attrs: np.ndarray, digits: int | None = None) -> dict[str, float]:
    """(20,) attributes (AUs 0..5, angles radians) -> the sliders' values: name -> AU, or
    angle in degrees (rounded to ``digits`` decimals when given)."""
    out = {}
    for i, name in enumerate(ATTR_NAMES):
        v = math.degrees(float(attrs[i])) if i >= NUM_AUS else float(attrs[i])
        out[name] = v if digits is None else round(v, digits)
    return out


def _seconds(time: object) -> float:
    """A time on a timeline (s), checked: finite number."""
    if isinstance(time, bool) or not isinstance(time, (int, float)) or not math.isfinite(time):
        raise UsageError(f"time: expected seconds, got {time!r}")
    return float(time)


def set_expressions(values: dict, source_attrs: np.ndarray, offsets: bool) -> list[str]:
    """The ``--set`` expressions for slider values that differ from the source's own.

    Args:
        values: attribute name -> slider value (AUs 0..5, angles degrees); missing = the source's.
        source_attrs: (20,) the source's measured attributes (angles radians).
        offsets: True with a driving clip (``AU12+=1.5``: on top of the driven value),
            False for a still (``AU12=4``).
    """
    out = []
    own_values = slider_values(source_attrs)
    for i, name in enumerate(ATTR_NAMES):
        if name not in values:
            continue
        angle = i >= NUM_AUS
        own = own_values[name]
        v = _number(values, name)
        delta = round(v - own, 2)
        if abs(delta) < (0.25 if angle else 0.025):
            continue
        unit = "deg" if angle else ""
        if offsets:
            out.append(f"{name}{'+=' if delta >= 0 else '-='}{abs(delta):g}{unit}")
        else:
            out.append(f"{name}={round(v, 2):g}{unit}")
    return out


@dataclass
class DriveSpec:
    """How a driving clip drives: the page's toggles as ``reenact`` options.

    All four parts: ``--driving`` (mode full); pose alone: ``--mode pose``; brows, eyes and
    mouth: ``--mode expression``; any other set: part drivers (``--pose-from`` ...).
    """

    parts: tuple[str, ...]
    relative: bool = True
    smooth: SmoothMethod = "gaussian"
    smooth_strength: float = 1.0

    @classmethod
    def from_json(cls, data: dict) -> "DriveSpec":
        """The page's drive state, checked as the reenact options check them.

        Raises:
            UsageError: bad parts, or a bad ``relative`` / ``smooth`` / ``smooth_strength``.
        """
        from ..options import check_option

        parts = data.get("parts", list(DRIVE_PARTS))
        if not isinstance(parts, list) or not parts or any(p not in DRIVE_PARTS for p in parts):
            raise UsageError(f"parts: expected a non-empty list of {', '.join(DRIVE_PARTS)}, got {parts!r}")
        relative = data.get("relative", True)
        if relative is None:
            raise UsageError("relative: expected true or false")
        values = {name: check_option(name, data.get(name, default)) for name, default in
                  (("relative", True), ("smooth", "gaussian"), ("smooth_strength", 1.0))}
        return cls(tuple(p for p in DRIVE_PARTS if p in parts), bool(values["relative"]), values["smooth"],
                   float(values["smooth_strength"]))

    def layout(self) -> tuple[Mode | None, dict[str, bool]]:
        """(mode of the main driver or None, part regions driven by part drivers)."""
        parts = set(self.parts)
        if parts == set(DRIVE_PARTS):
            return "full", {}
        if parts == {"pose"}:
            return "pose", {}
        if parts == {"brows", "eyes", "mouth"}:
            return "expression", {}
        return None, {p: True for p in self.parts}

    def reenact_options(self, clip: str) -> dict:
        """``icface_video.api.reenact`` keyword options (also the ``batch`` job fields)."""
        mode, parts = self.layout()
        out: dict = {"driving": clip if mode else None}
        if mode and mode != "full":
            out["mode"] = mode
        for p in parts:
            out[f"{p}_from"] = clip
        out["relative"] = self.relative
        if self.smooth != "gaussian":
            out["smooth"] = self.smooth
        if self.smooth_strength != 1.0:
            out["smooth_strength"] = self.smooth_strength
        return out


def command_line(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in ["icface-video", *args])


def reenact_argv(source: str, output: str, options: dict, sets: list[str]) -> list[str]:
    """The ``icface-video reenact`` arguments of :func:`icface_video.api.reenact` options."""
    argv = ["reenact", "-s", source]
    if options.get("driving"):
        argv += ["-d", options["driving"]]
    if options.get("mode"):
        argv += ["--mode", options["mode"]]
    for p in DRIVE_PARTS:
        if options.get(f"{p}_from"):
            argv += [f"--{p}-from", options[f"{p}_from"]]
    argv.append("--relative" if options.get("relative", True) else "--absolute")
    if "smooth" in options:
        argv += ["--smooth", options["smooth"]]
    if "smooth_strength" in options:
        argv += ["--smooth-strength", f"{options['smooth_strength']:g}"]
    for s in sets:
        argv += ["--set", s]
    return argv + ["-o", output]


def batch_job_toml(source: str, output: str, options: dict, sets: list[str]) -> str:
    """The same job as one ``[[job]]`` table of a ``batch`` TOML job file."""
    import json

    lines = ["[[job]]", f"source = {json.dumps(source)}"]
    for key, value in options.items():
        if value is None:
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    if sets:
        lines.append(f"set = {json.dumps(sets)}")
    lines.append(f"output = {json.dumps(output)}")
    return "\n".join(lines) + "\n"


def preset_toml(description: str, values: dict, source_attrs: np.ndarray, offsets: bool) -> str:
    """A preset file of the slider values: ``[set]`` (a still) or ``[add]`` (offsets on a clip)."""
    import json

    exprs = set_expressions(values, source_attrs, offsets)
    if not exprs:
        raise UsageError("no slider differs from the source's own values: nothing to save")
    table = "add" if offsets else "set"
    lines = [f"description = {json.dumps(description or 'made in icface-video studio')}", "", f"[{table}]"]
    for e in exprs:
        m = re.fullmatch(r"([A-Za-z0-9]+)(\+=|-=|=)(-?[0-9.e+]+)(deg)?", e)
        if m is None:  # set_expressions writes only this form (a NaN source value would not match)
            raise ValueError(f"preset: cannot write the expression {e!r}")
        name, op, number, unit = m.groups()
        value = -float(number) if op == "-=" else float(number)
        lines.append(f'{name} = "{value:g}deg"' if unit else f"{name} = {value:g}")
    return "\n".join(lines) + "\n"


def keyframes_toml(keys: list[dict] | None, source_attrs: np.ndarray) -> str:
    """A keyframe file (:mod:`icface_video.keyframes`) of keys ``{"time": s, "values": {...}}``.

    Every attribute that differs from the source's own value in any key is written in every
    key (absolute values: AUs 0..5, angles as ``"Ndeg"``).
    """
    if not isinstance(keys, list) or not keys:
        raise UsageError("keys: add at least one key")
    rows = []
    for n, k in enumerate(keys, start=1):
        if not isinstance(k, dict) or not isinstance(k.get("values"), dict):
            raise UsageError(f"keys[{n}]: expected {{time, values}}")
        t = k.get("time")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 3600:
            raise UsageError(f"keys[{n}]: time must be within 0..3600 s, got {t!r}")
        rows.append((float(t), k["values"]))
    rows.sort(key=lambda r: r[0])
    if len({t for t, _ in rows}) != len(rows):
        raise UsageError("keys: two keys at the same time")
    changed = [n for n in ATTR_NAMES if any(set_expressions({n: v[n]}, source_attrs, False) for _, v in rows if n in v)]
    if not changed:
        raise UsageError("keys: no key differs from the source's own values")
    own = slider_values(source_attrs)
    lines = []
    for t, v in rows:
        lines += ["[[key]]", f"time = {t:g}"]
        for name in changed:
            value = round(_number(v, name) if name in v else own[name], 2)
            lines.append(f'{name} = "{value:g}deg"' if ATTR_NAMES.index(name) >= NUM_AUS else f"{name} = {value:g}")
        lines.append("")
    return "\n".join(lines)


@dataclass
class Job:
    """A whole-video render running in a thread: progress for the page's bar."""

    output: str
    command: str
    state: str = "running"  # running | done | failed | cancelled
    stage: str = "starting"
    done: int = 0
    total: int = 0
    error: str | None = None
    summary: dict | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None  # the render's, once started

    def as_json(self) -> dict:
        return {"output": Path(self.output).name, "command": self.command, "state": self.state, "stage": self.stage,
                "done": self.done, "total": self.total, "error": self.error}


class Cancelled(Exception):
    """Raised inside a render when the studio stops (the output is then not written)."""


class Studio:
    """One studio: the model, the output folder, the source, the clip and the render job.

    Args:
        outdir: where exports, renders and uploads go (created).
        device: compute device name (as ``--device``).
        max_preview_side: drafts (while a slider moves) are rendered with the picture's
            longer side at most this many pixels; the full size on release.
    """

    def __init__(self, outdir: str | Path, device: str = "auto", max_preview_side: int = 512) -> None:
        from ..api import load_model
        from ..reenact import RenderOptions, geometry_stage

        self.outdir = Path(outdir).expanduser().resolve()
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.model = load_model(None, device)
        geo, draft_geo = geometry_stage(self.model, RenderOptions()), geometry_stage(self.model, RenderOptions())
        if geo is None or draft_geo is None:  # the studio draws with the geometric renderer (the default)
            raise RuntimeError("studio: the default renderer must be the geometric one")
        self._geo, self._draft_geo = geo, draft_geo
        self.max_preview_side = int(max_preview_side)
        self.lock = threading.RLock()
        self.source_path: str | None = None
        self.still: SourceFrame | None = None
        self._draft: tuple[np.ndarray, np.ndarray] | None = None  # (rgb, landmarks) at most max_preview_side
        self.clip_path: str | None = None
        self._clip_face: FaceTrack | None = None  # FaceTrack of the clip
        self._tracks: dict = {}
        self.thumbs: list[bytes] = []
        self.user_presets: dict[str, Path] = {}
        self.files: dict[str, Path] = {}  # what the page may download: the files this studio wrote
        self.job: Job | None = None

    # -- inputs ----------------------------------------------------------------------

    def load_source(self, path: str | Path) -> dict:
        """Analyse a photo; raises InputError (not a photo, no face)."""
        from ..media import load_image, probe
        from ..source import still_from_rgb

        p = Path(path)
        info = probe(p)
        if not info.is_still:
            raise InputError(p, "the studio edits a photo: this is a video (load it as the driving clip)")
        still = still_from_rgb(load_image(p), self.model.resolution, 0, p)
        with self.lock:
            self.source_path, self.still, self._draft = str(p), still, self._make_draft(still)
            return self._source_info()

    def _make_draft(self, still: SourceFrame) -> tuple[np.ndarray, np.ndarray] | None:
        import cv2

        h, w = still.rgb.shape[:2]
        k = self.max_preview_side / max(h, w)
        if k >= 1:
            return None
        size = (max(16, round(w * k)), max(16, round(h * k)))
        rgb = cv2.resize(still.rgb, size, interpolation=cv2.INTER_AREA)
        scale = np.array([size[0] / w, size[1] / h, size[0] / w], np.float32)
        return rgb, (still.landmarks * scale).astype(still.landmarks.dtype)

    def source_info(self) -> dict | None:
        return self._source_info() if self.still is not None else None

    def _source_info(self) -> dict:
        path, still = self._loaded_source()
        values = slider_values(still.attrs, 2)
        h, w = still.rgb.shape[:2]
        return {"name": Path(path).name, "path": path, "width": w, "height": h,
                "values": values}

    def load_clip(self, path: str | Path, progress: Callable[[int, int], None] | None = None) -> dict:
        """Analyse a driving video (faces, attributes) and keep small frames for the timeline."""
        import cv2

        from ..media import iter_frames, probe
        from ..track import analyze_media

        p = Path(path)
        info = probe(p)
        if info.is_still:
            raise InputError(p, "a driving clip must be a video, not a photo")
        if info.duration > 600:
            raise InputError(p, f"the studio takes clips up to 10 minutes ({info.duration:.0f} s)")
        face = analyze_media(p, progress=progress)
        if not face.success.any():
            raise InputError(p, "no face found in any frame of the driving clip")
        thumbs = []
        for fr in iter_frames(p):
            h, w = fr.rgb.shape[:2]
            k = min(1.0, 256 / max(h, w))
            small = cv2.resize(fr.rgb, (round(w * k), round(h * k)), interpolation=cv2.INTER_AREA) if k < 1 else fr.rgb
            thumbs.append(cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes())
        with self.lock:
            self.clip_path, self._clip_face, self._tracks, self.thumbs = str(p), face, {}, thumbs
            return self._clip_info()

    def clip_info(self) -> dict | None:
        return self._clip_info() if self._clip_face is not None else None

    def _clip_info(self) -> dict:
        path, face = self._loaded_clip()
        t = face.times
        return {"name": Path(path).name, "path": path, "frames": int(len(t)),
                "times": [round(float(x), 4) for x in t], "fps": round(float(face.info.fps or 25), 3)}

    def _loaded_clip(self) -> tuple[str, FaceTrack]:
        """The driving clip's path and face track; UsageError when none is loaded."""
        if self.clip_path is None or self._clip_face is None:
            raise UsageError("no driving clip loaded")
        return self.clip_path, self._clip_face

    def track(self, smooth: SmoothMethod, strength: float):
        """The clip as an :class:`~icface_video.driving.AttributeTrack` with this smoothing
        (what ``reenact`` reads from it; the clip is analysed once)."""
        from ..driving import AttributeTrack
        from ..smoothing import SmoothConfig

        key = (smooth, strength)
        if key not in self._tracks:
            self._tracks[key] = AttributeTrack.from_face_track(self._loaded_clip()[1], SmoothConfig(smooth, strength))
        return self._tracks[key]

    def add_user_preset(self, path: Path) -> str:
        """Add a user's preset file to the menu (validated); returns its menu name."""
        from .. import presets as P

        preset = P.parse(path)
        name = f"{preset.name} (file)"
        self.user_presets[name] = path
        return name

    def preset_names(self) -> list[str]:
        from .. import presets as P

        return P.builtin_names() + sorted(self.user_presets)

    # -- attributes and pictures ------------------------------------------------------

    def _loaded_source(self) -> tuple[str, SourceFrame]:
        """The source photo's path and analysis; UsageError when none is loaded."""
        if self.source_path is None or self.still is None:
            raise UsageError("no source photo loaded: open one first")
        return self.source_path, self.still

    def _need_source(self) -> SourceFrame:
        return self._loaded_source()[1]

    def attributes(self, values: dict, drive: dict | None = None, time: float = 0.0,
                   keys: list | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(20,) the attributes on screen, and the head placement (absolute driving) or None.

        With ``keys`` (and no clip) the keyframe animation at ``time`` s, read back from the
        file :meth:`export_keyframes` would write (what ``animate --keyframes`` renders).
        """
        from ..align import landmark_params
        from ..driving import compose

        still = self._need_source()
        offsets = drive is not None
        ops = [parse_set(e) for e in set_expressions(values, still.attrs, offsets)]
        if drive is None and keys:
            import tempfile

            from ..keyframes import load_keyframes

            time = _seconds(time)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "keys.toml"
                path.write_text(keyframes_toml(keys, still.attrs), encoding="utf-8")
                frames = load_keyframes(path)
            return frames.evaluate(still.attrs, np.array([float(time)]))[0], None
        if drive is None:
            return apply_ops(still.attrs[None], ops)[0], None
        self._loaded_clip()  # UsageError when no clip is loaded
        spec = DriveSpec.from_json(drive)
        time = _seconds(time)
        track = self.track(spec.smooth, spec.smooth_strength)
        mode, parts = spec.layout()
        times = np.array([float(time)])
        attrs = compose(still.attrs, times, track if mode else None, {p: track for p in parts}, mode or "full",
                        spec.relative)
        placement = None
        if not spec.relative and "pose" in spec.parts:
            placement = track.placement(times, float(landmark_params(still.landmarks)[2]))[0]
        return apply_ops(attrs, ops)[0], placement

    def render(self, values: dict, drive: dict | None = None, time: float = 0.0, draft: bool = False,
               keys: list | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB: the source with the values, or the keys at ``time`` (a
        draft: at most ``max_preview_side`` a side)."""
        attrs, placement = self.attributes(values, drive, time, keys)
        with self.lock:
            still = self._need_source()
            if draft and self._draft is not None:
                rgb, lm = self._draft
                k = rgb.shape[1] / still.rgb.shape[1]
                if placement is not None:
                    placement = np.array([placement[0] * k, placement[1] * k, placement[2]])
                return self._draft_geo.render(rgb, lm, still.attrs, attrs, placement)
            return self._geo.render(still.rgb, still.landmarks, still.attrs, attrs, placement)

    def apply_preset(self, name: str, values: dict) -> dict:
        """The slider values after a preset (its operations at its full intensity; a
        timeline's shape is for videos)."""
        from .. import presets as P

        self._need_source()
        if name not in self.user_presets and name not in P.builtin_names():  # before any file is looked at
            raise UsageError(f"preset {name!r}: not in the menu")
        path = self.user_presets.get(name) or P.resolve(name)
        preset = P.parse(path)
        attrs, _ = self.attributes(values)
        out = apply_ops(attrs[None], preset.ops, preset.intensity)[0]
        return slider_values(out, 2)

    # -- exports ------------------------------------------------------------------------

    def _write(self, name: str, text: str, overwrite: bool) -> Path:
        from ..outputs import atomic_output

        path = self.outdir / name
        with atomic_output(path, overwrite) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
        self.files[name] = path
        return path

    def export_preset(self, name: object, description: str, values: dict, drive: dict | None, overwrite: bool) -> dict:
        from .. import presets as P

        still = self._need_source()
        text = preset_toml(description, values, still.attrs, drive is not None)
        path = self._write(safe_name(name, ".toml"), text, overwrite)
        problems = P.problems(path)
        if problems:  # never expected: the file is made from checked values
            raise InputError(path, str(problems[0]))
        self.user_presets.setdefault(f"{path.stem} (file)", path)
        return {"file": path.name, "path": str(path), "text": text,
                "command": command_line(["presets", "validate", str(path)])}

    def export_keyframes(self, name: object, keys: list | None, overwrite: bool) -> dict:
        from ..keyframes import load_keyframes

        still = self._need_source()
        text = keyframes_toml(keys, still.attrs)
        path = self._write(safe_name(name, ".toml"), text, overwrite)
        load_keyframes(path)  # raises InputError if it would not be read back
        return {"file": path.name, "path": str(path), "text": text}

    def commands(self, values: dict, drive: dict | None, output: str = "studio.mp4",
                 keyframes: str | None = None) -> dict:
        """What is on screen as command lines: the picture (``edit``), the video
        (``reenact`` with a clip, else ``animate``) and the video as a ``batch`` job."""
        source, still = self._loaded_source()
        out_video = str(self.outdir / safe_name(output, ".mp4"))
        if drive is not None:
            clip, _ = self._loaded_clip()
            sets = set_expressions(values, still.attrs, True)
            options = DriveSpec.from_json(drive).reenact_options(clip)
            return {"video": command_line(reenact_argv(source, out_video, options, sets)),
                    "batch": batch_job_toml(source, out_video, options, sets), "kind": "reenact"}
        sets = set_expressions(values, still.attrs, False)
        edit = ["edit", "-s", source] + [x for s in sets for x in ("--set", s)] + \
            ["-o", str(self.outdir / "studio.png")]
        if keyframes:
            video = ["animate", "-s", source, "--keyframes", keyframes, "-o", out_video]
        else:
            video = ["animate", "-s", source] + [x for s in sets for x in ("--set", s)] + \
                ["--duration", "3", "-o", out_video]
        return {"still": command_line(edit) if sets else None,
                "video": command_line(video) if (sets or keyframes) else None, "kind": "animate"}

    # -- whole videos ------------------------------------------------------------------

    def start_render(self, values: dict, drive: dict | None, output: str, keys: list | None,
                     overwrite: bool) -> Job:
        """Start rendering the whole video in a thread; returns its :class:`Job`."""
        from ..outputs import check_output

        still = self._need_source()
        if self.job is not None and self.job.state == "running":
            raise UsageError("a video is already being rendered")
        name = safe_name(output, ".mp4")
        out = self.outdir / name
        check_output(out, overwrite)
        keyfile = None
        if drive is None and keys:
            keyfile = self.export_keyframes(Path(name).stem + ".keys", keys, True)["path"]
        cmds = self.commands(values, drive, name, keyfile)
        if cmds["video"] is None:
            raise UsageError("nothing to render: move a slider, add keys or load a driving clip")
        job = Job(str(out), cmds["video"])
        if drive is not None:
            sets = set_expressions(values, still.attrs, True)
            options = DriveSpec.from_json(drive).reenact_options(self._loaded_clip()[0])
            work = lambda progress: self._render_reenact(out, options, sets, overwrite, progress)  # noqa: E731
        else:
            sets = set_expressions(values, still.attrs, False)
            work = lambda progress: self._render_animate(out, keyfile, sets, overwrite, progress)  # noqa: E731

        def progress(stage: str, done: int, total: int) -> None:
            if job.cancel.is_set():
                raise Cancelled()
            job.stage, job.done, job.total = stage, int(done), int(total)

        def run() -> None:
            try:
                job.summary = work(progress)
                job.state = "done"
                self.files[name] = out
            except Cancelled:
                job.state, job.error = "cancelled", "stopped"
            except Exception as exc:  # noqa: BLE001 - shown on the page as one line
                job.state, job.error = "failed", str(exc) if hasattr(exc, "exit_code") else f"{type(exc).__name__}: {exc}"

        self.job = job
        job.thread = threading.Thread(target=run, name="studio-render", daemon=True)
        job.thread.start()
        return job

    def _render_reenact(self, out: Path, options: dict, sets: list[str], overwrite: bool, progress) -> dict:
        from ..api import reenact

        driving = options.pop("driving", None)
        return reenact(self._loaded_source()[0], driving, out, set=sets, overwrite=overwrite, model=self.model,
                       progress=progress, **options)

    def _render_animate(self, out: Path, keyfile: str | None, sets: list[str], overwrite: bool, progress) -> dict:
        """``icface-video animate -s SOURCE (--keyframes K | --set ... --duration 3) -o OUT``,
        through the planner and render loop ``animate`` uses."""
        from ..jobs import animate_job, run_reenact
        from ..keyframes import load_keyframes
        from ..options import ReenactOptions

        keys = load_keyframes(keyfile) if keyfile else None
        opts = ReenactOptions(source=self._loaded_source()[0], output=str(out), set=() if keys else tuple(sets))
        job = animate_job(opts, keys, None if keys else 3.0, 25.0, 0.25, overwrite)
        return run_reenact(job, self.model, progress)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel a running render and wait for it (its output is not written)."""
        job = self.job
        if job is not None and job.state == "running":
            job.cancel.set()
            if job.thread is not None:
                job.thread.join(timeout)
