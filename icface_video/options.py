"""The reenactment options: one typed, validated definition for the CLI, ``batch`` and the API.

:class:`ReenactOptions` is a frozen dataclass; each field's metadata (:class:`OptionSpec`)
says its help text, range, choices, command-line flag and whether it is a per-job field of
``batch`` job files. From it come:

- the click options of ``reenact`` and the ones ``animate``, ``edit``, ``neutralize`` and
  ``batch`` share (:func:`click_options`);
- the ``batch`` job-file fields (:data:`BATCH_FIELDS`) and their parsing and checks
  (:func:`parse_value`: text, JSON or TOML values);
- the defaults of :class:`icface_video.jobs.ReenactJob`, the render options and the
  Python API (:data:`DEFAULTS`);
- a plain listing for other front ends (:func:`describe`: name, type, default, range,
  choices, help).

Constructing a :class:`ReenactOptions` checks every field (:func:`check_option`); a bad
value is a :class:`~icface_video.errors.UsageError` naming the field.

Convention:
    AUs and angles are not options here (``--set`` expressions carry them). Times are in
    seconds; ``face_index`` 0 is the largest face. ``CLI_ONLY`` lists the options of
    ``reenact`` that are not job fields (the batch command takes them once for all jobs).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Sequence

import click

from .driving import MODES, Mode
from .encode import CODECS
from .errors import UsageError
from .geo_render import RENDERERS
from .smoothing import SMOOTH_METHODS, SmoothMethod

__all__ = ["BATCH_FIELDS", "CLI_ONLY", "DEFAULTS", "DEVICE_NAMES", "DeviceChoice", "FIELD_NAMES", "FiniteFloatRange",
           "KINDS", "OptionSpec", "PART_FIELDS", "ReenactOptions", "X264_PRESETS", "check_option", "click_options",
           "describe", "option_spec", "parse_value", "range_text"]

X264_PRESETS: tuple[str, ...] = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                                 "veryslow")
DEVICE_NAMES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
_NTH_GPU = re.compile(r"cuda:\d{1,3}")  # a device name besides DEVICE_NAMES: cuda:N
#: value kinds: a media path, the output path, a list of strings, one of ``choices``, an
#: integer or a (finite) float within ``range``, a boolean, a compute device name.
KINDS = ("path", "output", "list", "choice", "int", "float", "bool", "device")
PART_FIELDS = ("pose_from", "expression_from", "eyes_from", "mouth_from", "brows_from")


@dataclass(frozen=True)
class OptionSpec:
    """What one option is, for every front end.

    Attributes:
        help: the help text (command line and other front ends).
        flags: click declarations: ``("--source", "-s")``, ``("--detail/--no-detail",)``.
        kind: one of :data:`KINDS`.
        group: ``inputs``, ``drive``, ``smooth``, ``render``, ``encode``, ``faces`` or ``run``.
        choices: the allowed values of a ``choice``.
        low, high: inclusive bounds of an ``int`` or ``float`` (None: unbounded).
        low_open: ``low`` itself is refused (a value must be above it).
        batch: a per-job field of ``batch`` job files (and of ``icface_video.reenact()``).
        required: required on the command line.
        dest: the click parameter name, when not the field's name.
    """

    help: str
    flags: tuple[str, ...]
    kind: str
    group: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    batch: bool = True
    required: bool = False
    dest: str | None = None


def _opt(default: Any, help: str, flags: str | tuple[str, ...], kind: str, group: str, **spec: Any) -> Any:
    """A dataclass field carrying its :class:`OptionSpec` (``metadata["option"]``)."""
    meta = {"option": OptionSpec(help, (flags,) if isinstance(flags, str) else flags, kind, group, **spec)}
    return field(default=default, metadata=meta)


_FACE_HELP = "Which face when several are visible (0 = largest, 1 = next, ...): the source's and the drivers'."


class FaceChoice:
    """The faces a job follows, for dataclasses with ``face_index``, ``source_face`` and
    ``driver_face`` fields (:class:`ReenactOptions`, :class:`icface_video.jobs.ReenactJob`):
    ``source_face``/``driver_face`` override ``face_index`` (0 = the largest face) when set."""

    face_index: int
    source_face: int | None
    driver_face: int | None

    @property
    def source_index(self) -> int:
        """Which face in the source is reenacted."""
        return self.face_index if self.source_face is None else self.source_face

    @property
    def driver_index(self) -> int:
        """Which face in the drivers drives it."""
        return self.face_index if self.driver_face is None else self.driver_face


@dataclass(frozen=True)
class ReenactOptions(FaceChoice):
    """Every option of one reenactment (``icface-video reenact``, a ``batch`` row, the API).

    Field names are the ``batch`` field names and the API's keywords; the command-line flag
    is the name with ``-`` for ``_`` unless its spec says otherwise. Values are checked on
    construction (UsageError naming the field); list fields become tuples, paths strings.
    """

    source: str | None = _opt(None, "Source photo or clip.", ("--source", "-s"), "path", "inputs", required=True)
    driving: str | None = _opt(None, "Driving video or attribute CSV.", ("--driving", "-d"), "path", "inputs")
    output: str | None = _opt(None, "Video to write (.mp4).", ("-o", "--output"), "output", "inputs", required=True)
    mode: Mode = _opt("full", "What --driving drives.", "--mode", "choice", "drive", choices=MODES)
    pose_from: str | None = _opt(None, "Head pose from this video/CSV.", "--pose-from", "path", "drive")
    expression_from: str | None = _opt(None, "All AUs from this video/CSV.", "--expression-from", "path", "drive")
    eyes_from: str | None = _opt(None, "AU05 06 07 45 from this video/CSV.", "--eyes-from", "path", "drive")
    mouth_from: str | None = _opt(None, "AU09 10 12 14 15 17 20 23 25 26 from this video/CSV.", "--mouth-from",
                                  "path", "drive")
    brows_from: str | None = _opt(None, "AU01 02 04 from this video/CSV.", "--brows-from", "path", "drive")
    relative: bool | None = _opt(None, "Apply driver changes to the source's own values (default for photos) or copy "
                                 "them (default for clips).", "--relative/--absolute", "bool", "drive")
    preset: tuple[str, ...] = _opt((), "Preset name or TOML file (repeatable, in order).", "--preset", "list", "drive")
    set: tuple[str, ...] = _opt((), "AU12=3.5, yaw=10deg, AU04+=1, AU12*=1.5 (repeatable).", "--set", "list", "drive")
    start: float = _opt(0.0, "Reenact from this time (s) of the driver (every driver, a source clip and the audio "
                        "alike).", "--start", "float", "drive", low=0.0)
    duration: float | None = _opt(None, "Reenact this many seconds (default: to the driver's end).", "--duration",
                                  "float", "drive", low=0.0, low_open=True)
    smooth: SmoothMethod = _opt("gaussian", "Temporal smoothing of AUs and angles: zero-lag gaussian, causal One Euro, or none.",
                       "--smooth", "choice", "smooth", choices=SMOOTH_METHODS)
    smooth_strength: float = _opt(1.0, "Smoothing strength: 1 = about one frame at 25 fps (gaussian) / 1.5 Hz "
                                  "cut-off (oneeuro); 2 = twice as smooth.", "--smooth-strength", "float", "smooth",
                                  low=0.001, high=100.0)
    model: str | None = _opt(None, "Model folder (default: the shipped model).", "--model", "path", "run",
                             batch=False, dest="model_path")
    device: str = _opt("auto", "Compute device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.", "--device",
                       "device", "run", choices=DEVICE_NAMES, batch=False)
    batch_size: int = _opt(8, "Frames per generator call.", "--batch-size", "int", "render", low=1, high=256)
    renderer: str = _opt("geometry", "geometry: the motion model moves the source's 3D landmarks and the frame is "
                         "warped onto them at its own resolution (mouth interior drawn); network: the ICface "
                         "generator's 128 px render, pasted back (--detail and --eyelids apply to it).", "--renderer",
                         "choice", "render", choices=RENDERERS)
    detail: bool = _opt(True, "Paste back at the frame's resolution: the network's warp fetches from the source frame "
                        "itself, only what it draws (mouth interior, lids) comes from its 128 px crop. --no-detail "
                        "pastes the crop.", "--detail/--no-detail", "bool", "render")
    eyelids: bool = _opt(True, "Close and open the source's eyes to the driving AU45 with the model's eyelid warp "
                         "(its eyelids.json); --no-eyelids leaves the lids to the generator alone.",
                         "--eyelids/--no-eyelids", "bool", "render")
    crop_only: bool = _opt(False, "Write the aligned generated crops, not pasted back.", "--crop-only", "bool",
                           "render")
    color_match: bool = _opt(False, "Match the generated face's colours to the source.", "--color-match", "bool",
                             "render")
    crf: int = _opt(18, "x264 quality (lower = better).", "--crf", "int", "encode", low=0, high=51)
    x264_preset: str = _opt("medium", "x264 speed preset.", "--x264-preset", "choice", "encode", choices=X264_PRESETS)
    no_audio: bool = _opt(False, "Do not copy the driver's audio.", "--no-audio", "bool", "encode")
    codec: str = _opt("h264", "Video codec: H.264 (.mp4 .mov .mkv) or ProRes 422 HQ (.mov .mkv). The output's "
                      "extension decides the container; frames/%05d.png writes a PNG sequence.", "--codec", "choice",
                      "encode", choices=CODECS)
    alpha: bool = _opt(False, "Write the face mask as an alpha channel: ProRes 4444 (with --codec prores) or RGBA "
                       "PNGs.", "--alpha", "bool", "encode")
    preview: bool = _opt(False, "Also write OUT.preview.mp4 (source | driver | result) and OUT.contact.png.",
                         "--preview", "bool", "encode")
    face_index: int = _opt(0, _FACE_HELP, "--face-index", "int", "faces", low=0, high=64)
    source_face: int | None = _opt(None, "Which face in the source (default: --face-index).", "--source-face", "int",
                                   "faces", low=0, high=64)
    driver_face: int | None = _opt(None, "Which face in the drivers (default: --face-index).", "--driver-face", "int",
                                   "faces", low=0, high=64)

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, check_option(f.name, getattr(self, f.name)))

    @property
    def parts(self) -> dict[str, str]:
        """Region -> part driver path (``pose``, ``expression``, ``eyes``, ``mouth``, ``brows``), given ones only."""
        return {k[: -len("_from")]: getattr(self, k) for k in PART_FIELDS if getattr(self, k)}

    def replace(self, **changes: Any) -> "ReenactOptions":
        """A copy with ``changes`` (checked)."""
        return replace(self, **changes)


_FIELDS = {f.name: f for f in fields(ReenactOptions)}
#: every option, in definition order (the order of ``reenact --help``).
FIELD_NAMES: tuple[str, ...] = tuple(_FIELDS)
#: the per-job fields of ``batch`` job files, in definition order.
BATCH_FIELDS: tuple[str, ...] = tuple(n for n, f in _FIELDS.items() if f.metadata["option"].batch)
#: options of ``icface-video reenact`` that are not job fields, and why: ``model`` and
#: ``device`` are given once for a whole batch (``batch --model --device``); ``overwrite``
#: (batch replaces a job's output, ``--resume`` keeps complete ones), ``quiet`` and
#: ``json`` concern the run, not the job. The API takes ``model``, ``device`` and
#: ``overwrite`` as keywords.
CLI_ONLY: tuple[str, ...] = ("model", "device", "overwrite", "quiet", "json")


def option_spec(name: str) -> OptionSpec:
    """The :class:`OptionSpec` of the field ``name`` (KeyError for an unknown name)."""
    return _FIELDS[name].metadata["option"]


def range_text(spec: OptionSpec) -> str:
    """How a number option's range reads in messages: ``within 0..51``, ``> 0``, ``>= 0``."""
    if spec.low is not None and spec.high is not None:
        return f"within {spec.low:g}..{spec.high:g}"
    if spec.low is not None:
        return f"{'>' if spec.low_open else '>='} {spec.low:g}"
    return f"<= {spec.high:g}" if spec.high is not None else "finite"


def _problem(name: str, spec: OptionSpec, value: Any) -> tuple[Any, str | None]:
    """(the value normalised, None), or (value, why it is refused: ``expected ...``)."""
    if value is None and _FIELDS[name].default is None:
        return None, None
    kind = spec.kind
    if kind in ("path", "output"):
        if isinstance(value, (str, os.PathLike)) and os.fspath(value) != "":
            return os.fspath(value), None
        return value, "expected a path"
    if kind == "list":
        items = (value,) if isinstance(value, str) else value
        if isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items):
            return tuple(items), None
        return value, "expected a string or a list of strings"
    choices = spec.choices or ()
    if kind == "device":
        if isinstance(value, str) and (value in choices or _NTH_GPU.fullmatch(value)):
            return value, None
        return value, f"expected one of {', '.join(choices)}, cuda:N"
    if kind == "choice":
        if isinstance(value, str) and value in choices:
            return value, None
        return value, f"expected one of {', '.join(choices)}"
    if kind == "bool":
        return (value, None) if isinstance(value, bool) else (value, "expected true/false")
    # int, float: finite, within the range; an int field takes whole numbers only
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and kind == "int":
        ok = float(value).is_integer()
    if ok:
        v = float(value)
        ok = (spec.low is None or (v > spec.low if spec.low_open else v >= spec.low)) \
            and (spec.high is None or v <= spec.high)
    if ok:
        return (int(value) if kind == "int" else float(value)), None
    return value, f"expected {'an integer' if kind == 'int' else 'a number'} {range_text(spec)}"


def check_option(name: str, value: Any) -> Any:
    """``value`` checked and normalised for the option ``name`` (paths as str, lists as tuples).

    Raises:
        UsageError: ``name: expected ..., got VALUE`` for an unknown option or a value of
            the wrong type, outside its range or not among its choices.
    """
    if name not in _FIELDS:
        raise UsageError(f"{name}: unknown option")
    checked, reason = _problem(name, option_spec(name), value)
    if reason:
        raise UsageError(f"{name}: {reason}, got {value!r}")
    return checked


#: the options with their defaults.
DEFAULTS = ReenactOptions()


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "on"):
        return True
    if text in ("0", "false", "no", "n", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def parse_value(name: str, raw: Any) -> Any:
    """A job-file value (CSV text, or a JSON / TOML value) of the option ``name``, typed and checked.

    Lists: several values separated by ``;`` in text, or a list. Booleans: true/false,
    yes/no, on/off, 1/0. Numbers: text or numbers. Choices: text.

    Raises:
        ValueError: why, with the value as given (``expected an integer within 0..51, got '99'``).
    """
    spec = option_spec(name)
    value = raw
    if spec.kind == "list":
        items = raw if isinstance(raw, list) else ([] if raw is None else str(raw).split(";"))
        value = [str(v).strip() for v in items if str(v).strip()]
    elif spec.kind == "bool":
        value = _as_bool(raw)
    elif spec.kind in ("int", "float") and isinstance(raw, str):
        try:
            value = float(raw) if spec.kind == "float" else int(raw)
        except ValueError:
            pass
    elif spec.kind in ("choice", "device") and isinstance(raw, (str, int, float)):
        value = str(raw)
    checked, reason = _problem(name, spec, value)
    if reason:
        raise ValueError(f"{reason}, got {raw!r}")
    return checked


def describe(names: Sequence[str] | None = None) -> list[dict]:
    """The options with their metadata, for front ends that build their own controls.

    Returns:
        one dict per option (definition order; ``names`` to choose): ``name``, ``type``
        (a :data:`KINDS` entry), ``default``, ``range`` (``[low, high]``, None for
        unbounded; None for non-numbers), ``low_open``, ``choices`` (None unless a choice),
        ``help``, ``flag`` (the long command-line flag), ``group``, ``batch`` (a job field).
    """
    out = []
    for name in names or _FIELDS:
        spec, default = option_spec(name), _FIELDS[name].default
        numeric = spec.kind in ("int", "float")
        out.append({"name": name, "type": spec.kind, "default": list(default) if isinstance(default, tuple) else default,
                    "range": [spec.low, spec.high] if numeric else None, "low_open": spec.low_open,
                    "choices": list(spec.choices) if spec.choices else None, "help": spec.help,
                    "flag": next(f for f in spec.flags if f.startswith("--")).split("/")[0], "group": spec.group,
                    "batch": spec.batch})
    return out


# -- the command line ---------------------------------------------------------------------


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and infinity (usage error, exit 2).

    NaN slips through a plain range check (every comparison with it is false).
    """

    name = "finite float range"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class DeviceChoice(click.Choice):
    """``--device``: one of :data:`DEVICE_NAMES`, or ``cuda:N`` for the N-th GPU."""

    def __init__(self) -> None:
        super().__init__(DEVICE_NAMES)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and _NTH_GPU.fullmatch(value.strip()):
            return value.strip()
        if value not in DEVICE_NAMES:
            self.fail(f"{value!r} is not one of {', '.join(DEVICE_NAMES)}, cuda:N.", param, ctx)
        return value

    def get_metavar(self, param, *args, **kwargs) -> str:
        return "[auto|cpu|cuda|cuda:N|mps]"


def _click_type(spec: OptionSpec):
    if spec.kind == "list":
        return click.STRING
    if spec.kind in ("path", "output"):
        return click.Path(path_type=str)
    if spec.kind == "choice":
        return click.Choice(spec.choices or ())
    if spec.kind == "device":
        return DeviceChoice()
    if spec.kind == "int":
        return click.IntRange(None if spec.low is None else int(spec.low), None if spec.high is None else int(spec.high))
    return FiniteFloatRange(min=spec.low, max=spec.high, min_open=spec.low_open)


def click_options(*names: str, help: dict[str, str] | None = None, gather: str | None = None) -> Callable:
    """A decorator adding the click options of the fields ``names`` (in that order in ``--help``).

    Args:
        names: :class:`ReenactOptions` field names.
        help: per-command help texts replacing the spec's (``{"crop_only": "..."}``).
        gather: pass the values as one :class:`ReenactOptions` keyword argument of this
            name (the other fields at their defaults) instead of one keyword per option
            (named by the spec's ``dest`` or the field name).
    """
    help = help or {}

    def option(name: str):
        spec, default = option_spec(name), _FIELDS[name].default
        decls = list(spec.flags) + ([spec.dest] if spec.dest else [name])
        kw: dict[str, Any] = {"help": help.get(name, spec.help)}
        if spec.required:
            kw["required"] = True
        elif spec.kind == "list":
            kw["multiple"] = True
        else:
            kw["default"] = default
            if spec.kind == "bool" and "/" not in spec.flags[0]:
                kw["is_flag"] = True
            else:
                kw["show_default"] = default is not None and spec.kind != "path"
        if spec.kind != "bool":
            kw["type"] = _click_type(spec)
        return click.option(*decls, **kw)

    def decorate(func):
        if gather:
            @functools.wraps(func)
            def target(*args, **kwargs):
                values = {n: kwargs.pop(option_spec(n).dest or n) for n in names}
                kwargs[gather] = ReenactOptions(**values)
                return func(*args, **kwargs)
        else:
            target = func
        for name in reversed(names):
            target = option(name)(target)
        return target

    return decorate
