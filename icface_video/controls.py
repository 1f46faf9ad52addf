"""Hand-set controls on the 20 attributes: named values, regions, and set/add/scale operations.

An :class:`Op` changes one attribute of a (N, 20) attribute track with a weight that may
vary over time (presets with a timeline, ramps in ``animate``)::

    set    v <- v + w * (value - v)      (w = 1: exactly ``value``)
    add    v <- v + w * value
    scale  v <- v * (1 + w * (value - 1))

AUs are clipped to 0..5 after every operation; angles are radians.

``--set`` syntax (:func:`parse_set`): ``AU12=3.5`` (set), ``AU12+=1`` / ``AU12-=1`` (add),
``AU12*=1.5`` (scale); angles take ``deg`` or ``rad`` (default) suffixes:
``yaw=10deg``, ``pitch+=-0.1``. Names are case-insensitive: ``au12``, ``AU12``, ``12``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .attributes import ATTR_NAMES, AU_MAX, AU_NAMES, NUM_AUS, clip_aus
from .errors import UsageError

OpKind = Literal["set", "add", "scale"]
OP_KINDS: tuple[OpKind, ...] = ("set", "add", "scale")

# Which attributes each face region owns (used by presets' `region` and by the
# --eyes-from / --mouth-from / --brows-from part drivers of `reenact`).
REGIONS: dict[str, tuple[str, ...]] = {
    "brows": ("AU01", "AU02", "AU04"),
    "eyes": ("AU05", "AU06", "AU07", "AU45"),
    "mouth": ("AU09", "AU10", "AU12", "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26"),
    "pose": ("pitch", "yaw", "roll"),
}
REGIONS["expression"] = REGIONS["brows"] + REGIONS["eyes"] + REGIONS["mouth"]

# The longest timeline anything may ask for, in seconds: `animate --duration`, keyframe
# times and preset timelines (a key at 1e9 s would otherwise start a 30-year render).
MAX_SECONDS = 3600.0

# Plausible ranges, for validating hand-set values: AUs 0..5, angles within +-90 deg.
ANGLE_LIMIT = math.pi / 2


def attr_index(name: str) -> int:
    """Index (0..19) of an attribute name: ``AU12``/``au12``/``12``, ``pitch``/``yaw``/``roll``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    key = name.strip()
    low = key.lower()
    if low in ("pitch", "yaw", "roll"):
        return ATTR_NAMES.index(low)
    m = re.fullmatch(r"(?:au)?0*(\d+)(?:_r)?", low)
    if m:
        au = f"AU{int(m.group(1)):02d}"
        if au in AU_NAMES:
            return AU_NAMES.index(au)
    raise ValueError(f"unknown attribute {name!r} (expected one of {', '.join(ATTR_NAMES)})")


def is_angle(index: int) -> bool:
    return index >= NUM_AUS


@dataclass(frozen=True)
class Op:
    """One operation on one attribute.

    Attributes:
        kind: ``set``, ``add`` or ``scale``.
        index: attribute index 0..19 (``ATTR_NAMES``).
        value: target (set), delta (add) or factor (scale); AUs on 0..5, angles radians.
    """

    kind: OpKind
    index: int
    value: float

    def __post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise ValueError(f"kind: expected one of {OP_KINDS}, got {self.kind!r}")
        if not 0 <= self.index < len(ATTR_NAMES):
            raise ValueError(f"index: expected 0..{len(ATTR_NAMES) - 1}, got {self.index}")
        if not math.isfinite(self.value):
            raise ValueError(f"value: must be finite, got {self.value}")

    @property
    def name(self) -> str:
        return ATTR_NAMES[self.index]


def check_value(kind: str, index: int, value: float) -> str | None:
    """Why ``value`` is out of range for this op, or None when it is fine."""
    name = ATTR_NAMES[index]
    if kind == "set":
        if is_angle(index) and abs(value) > ANGLE_LIMIT:
            return f"{name} = {value:.3g} rad is outside -pi/2..pi/2 (did you mean degrees? add 'deg')"
        if not is_angle(index) and not 0 <= value <= AU_MAX:
            return f"{name} = {value:g} is outside the AU scale 0..5"
    elif kind == "add":
        limit = 2 * ANGLE_LIMIT if is_angle(index) else AU_MAX
        if abs(value) > limit:
            return f"{name} += {value:g} is larger than the whole range"
    elif kind == "scale" and not 0 <= value <= 10:
        return f"{name} *= {value:g}: scale factors must be within 0..10"
    return None


def parse_quantity(text: str, index: int) -> float:
    """A number, with an optional ``deg``/``rad`` suffix for angles (default radians)."""
    t = text.strip().lower().replace(" ", "")
    m = re.fullmatch(r"([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)(deg|rad|°)?", t)
    if not m:
        raise ValueError(f"{text!r} is not a number")
    value = float(m.group(1))
    unit = m.group(2)
    if unit and not is_angle(index):
        raise ValueError(f"{ATTR_NAMES[index]} is an AU (0..5): units like {unit!r} apply to angles only")
    return math.radians(value) if unit in ("deg", "°") else value


def parse_set(text: str) -> Op:
    """Parse one ``--set`` expression (see module docstring).

    Raises:
        UsageError: malformed expression, unknown name, bad number, out-of-range value.
    """
    m = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*([+\-*]?=)\s*(.+?)\s*", text)
    if not m:
        raise UsageError(f"--set {text!r}: expected NAME=VALUE, NAME+=VALUE, NAME-=VALUE or NAME*=VALUE")
    name, op, raw = m.groups()
    try:
        index = attr_index(name)
        value = parse_quantity(raw, index)
    except ValueError as exc:
        raise UsageError(f"--set {text!r}: {exc}") from None
    kinds: dict[str, OpKind] = {"=": "set", "+=": "add", "-=": "add", "*=": "scale"}
    kind = kinds[op]
    if op == "-=":
        value = -value
    problem = check_value(kind, index, value)
    if problem:
        raise UsageError(f"--set {text!r}: {problem}")
    return Op(kind, index, value)


def apply_ops(attrs: np.ndarray, ops: list[Op] | tuple[Op, ...], weight: np.ndarray | float = 1.0) -> np.ndarray:
    """Apply operations in order to an attribute track.

    Convention:
        attrs: (N, 20) AUs 0..5 then pitch/yaw/roll radians (not modified).
        weight: scalar or (N,) per-frame weight, typically -1..1 (1 = full effect).
        returns: (N, 20) float32, AUs clipped to 0..5.
    """
    out = np.array(attrs, np.float32, copy=True)
    if out.ndim != 2 or out.shape[1] != len(ATTR_NAMES):
        raise ValueError(f"attrs: expected (N, {len(ATTR_NAMES)}), got {out.shape}")
    w = np.broadcast_to(np.asarray(weight, np.float32), (out.shape[0],))
    for op in ops:
        col = out[:, op.index]
        if op.kind == "set":
            col += w * (op.value - col)
        elif op.kind == "add":
            col += w * op.value
        else:
            col *= 1.0 + w * (op.value - 1.0)
        out[:, op.index] = col
        clip_aus(out)
    return out
