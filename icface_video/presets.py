"""Presets: small TOML files that set, add to or scale named attributes.

Shipped presets live in the repository's ``presets/`` folder (installed as the
``icface_video.preset_files`` package data); a user's own file works wherever a name does.

File format (every key optional except at least one operation)::

    description = "A broad smile"
    region = "mouth"          # brows | eyes | mouth | pose | expression: the only
                              # attributes the preset may touch
    intensity = 1.0           # 0..2, multiplies the effect
    loop = false              # repeat the timeline (nod, shake)

    [set]                     # target values: AUs 0..5, angles in rad or "10deg"
    AU12 = 3.5
    [add]                     # deltas
    yaw = "15deg"
    [scale]                   # factors 0..10
    AU04 = 0.0

    [[timeline]]              # weight over time in seconds (-1..1), smoothly
    time = 0.0                # interpolated; absent = constant 1
    weight = 0.0

A bad file is rejected with ``file:line: key: reason`` (:class:`PresetError`).
"""

from __future__ import annotations

import importlib.resources
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from .attributes import ATTR_NAMES
from .controls import MAX_SECONDS, OP_KINDS, REGIONS, Op, apply_ops, attr_index, check_value, parse_quantity
from .errors import InputError

_TOP_KEYS = {"description", "region", "intensity", "loop", "timeline", *OP_KINDS}


class PresetError(InputError):
    """A preset file that cannot be used; the message names file, line and key."""


@dataclass(frozen=True)
class Preset:
    """A parsed preset.

    Attributes:
        name: file stem. description: one line for ``presets list``.
        region: restricts the attributes touched (None: any).
        intensity: multiplies the weight, 0..2.
        ops: operations in file order (set, then add, then scale).
        timeline: (K, 2) array of (time s, weight) points sorted by time, or None.
        loop: repeat the timeline with its last time as the period.
        path: where it was read from.
    """

    name: str
    description: str
    region: str | None
    intensity: float
    ops: tuple[Op, ...]
    timeline: np.ndarray | None = None
    loop: bool = False
    path: str = ""
    duration: float = field(default=0.0)

    def weight(self, times: np.ndarray) -> np.ndarray:
        """Per-frame weight (N,) at ``times`` (seconds): intensity x timeline (smoothstep between points)."""
        t = np.asarray(times, np.float64)
        if self.timeline is None:
            return np.full(t.shape, self.intensity, np.float32)
        kt, kw = self.timeline[:, 0], self.timeline[:, 1]
        if self.loop and kt[-1] > 0:
            t = np.mod(t, kt[-1])
        return (self.intensity * smooth_interp(t, kt, kw)).astype(np.float32)

    def apply(self, attrs: np.ndarray, times: np.ndarray, envelope: np.ndarray | float = 1.0) -> np.ndarray:
        """Apply to a (N, 20) track at ``times``; ``envelope`` (N,) scales the weight further."""
        return apply_ops(attrs, self.ops, self.weight(times) * np.asarray(envelope, np.float32))


def smooth_interp(t: np.ndarray, kt: ArrayLike, kv: ArrayLike) -> np.ndarray:
    """Interpolate key values with smoothstep easing between neighbouring keys, held at the ends.

    Convention: t (N,) s; kt (K,) increasing s; kv (K,) or (K, D). returns (N,) or (N, D).
    """
    t = np.asarray(t, np.float64)
    kt = np.asarray(kt, np.float64)
    kv = np.asarray(kv, np.float64)
    if len(kt) == 1:
        return np.broadcast_to(kv[0], t.shape + kv.shape[1:]).copy()
    i = np.clip(np.searchsorted(kt, t, side="right") - 1, 0, len(kt) - 2)
    span = kt[i + 1] - kt[i]
    u = np.clip((t - kt[i]) / np.where(span > 0, span, 1.0), 0.0, 1.0)
    u = u * u * (3 - 2 * u)
    if kv.ndim == 2:
        u = u[:, None]
    return kv[i] * (1 - u) + kv[i + 1] * u


# -- discovery ------------------------------------------------------------------


def builtin_dir() -> Path:
    """Folder of the shipped preset files."""
    return Path(str(importlib.resources.files("icface_video.preset_files")))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.toml"))


def resolve(name_or_file: str) -> Path:
    """A preset name (``smile``) or a path to a TOML file -> the file.

    Raises:
        PresetError: neither a shipped preset nor an existing file.
    """
    p = Path(name_or_file)
    if p.suffix == ".toml" or p.exists() or "/" in name_or_file:
        if not p.is_file():
            raise PresetError(p, "no such preset file")
        return p
    candidate = builtin_dir() / f"{name_or_file}.toml"
    if candidate.is_file():
        return candidate
    raise PresetError(name_or_file, f"unknown preset (shipped: {', '.join(builtin_names())})")


def load(name_or_file: str) -> Preset:
    """Load and validate a preset by name or path (raises :class:`PresetError`)."""
    return parse(resolve(name_or_file))


# -- parsing and validation --------------------------------------------------------


def _line_of(text: str, key: str, table: str | None = None) -> int:
    """1-based line of ``key = ...`` (inside ``[table]`` when given); 0 when not found."""
    current = None
    for n, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        header = re.fullmatch(r"\[\[?\s*([A-Za-z0-9_]+)\s*\]?\]", s)
        if header:
            current = header.group(1)
            if current == key and table is None:
                return n
            continue
        if re.match(rf'["\']?{re.escape(key)}["\']?\s*=', s) and (table is None or current == table):
            return n
    return 0


def parse(path: Path) -> Preset:
    """Parse and validate a preset file.

    Raises:
        PresetError: unreadable file, TOML syntax error, unknown key/table/attribute,
            wrong type, out-of-range value, attribute outside the preset's region (the
            first problem in the file; :func:`problems` lists them all).
    """
    preset, found = _parse(path)
    if found:
        raise found[0]
    assert preset is not None
    return preset


def problems(path: Path) -> list[PresetError]:
    """Every problem of a preset file, in file order (empty when it is valid)."""
    return _parse(path)[1]


def _parse(path: Path) -> tuple[Preset | None, list[PresetError]]:
    """The preset (None when invalid) and every problem found: checking goes on after
    a bad key, so one run of ``presets validate`` reports them all."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [PresetError(path, f"cannot read preset ({exc.__class__.__name__})")]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return None, [PresetError(path, f"TOML syntax error: {exc}")]
    found: list[PresetError] = []

    def fail(key: str, reason: str, table: str | None = None) -> None:
        line = _line_of(text, key, table)
        where = f"{path}:{line}" if line else str(path)
        found.append(PresetError(where, f"{key}: {reason}"))

    for key in data:
        if key not in _TOP_KEYS:
            fail(key, f"unknown key or operation (expected {', '.join(sorted(_TOP_KEYS))})")
    description = data.get("description", "")
    if not isinstance(description, str):
        fail("description", "must be a string")
    region = data.get("region")
    if region is not None and (not isinstance(region, str) or region not in REGIONS):
        fail("region", f"expected one of {', '.join(REGIONS)}, got {region!r}")
        region = None  # an unknown region restricts nothing; the keys are still checked
    intensity = data.get("intensity", 1.0)
    if isinstance(intensity, bool) or not isinstance(intensity, (int, float)) or not 0 <= intensity <= 2:
        fail("intensity", f"expected a number within 0..2, got {intensity!r}")
    loop = data.get("loop", False)
    if not isinstance(loop, bool):
        fail("loop", "expected true or false")

    ops: list[Op] = []
    any_op = False
    for kind in OP_KINDS:
        table = data.get(kind, {})
        if not isinstance(table, dict):
            fail(kind, "expected a table like [set] with NAME = value lines")
            any_op = True
            continue
        for key, raw in table.items():
            any_op = True
            try:
                index = attr_index(key)
            except ValueError as exc:
                fail(key, str(exc), kind)
                continue
            if region is not None and ATTR_NAMES[index] not in REGIONS[region]:
                fail(key, f"{ATTR_NAMES[index]} is outside the preset's region {region!r}", kind)
                continue
            if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                fail(key, f"expected a number (or a string like \"10deg\"), got {type(raw).__name__}", kind)
                continue
            try:
                value = parse_quantity(raw, index) if isinstance(raw, str) else float(raw)
            except ValueError as exc:
                fail(key, str(exc), kind)
                continue
            if not math.isfinite(value):
                fail(key, "must be finite", kind)
                continue
            problem = check_value(kind, index, value)
            if problem:
                fail(key, problem, kind)
                continue
            ops.append(Op(kind, index, value))
    if not any_op:
        found.append(PresetError(path, "no operation: add a [set], [add] or [scale] table"))

    timeline = None
    if "timeline" in data:
        points = data["timeline"]
        if not isinstance(points, list) or not points:
            fail("timeline", "expected [[timeline]] entries with time and weight")
        else:
            rows = []
            for i, pt in enumerate(points):
                if not isinstance(pt, dict) or set(pt) != {"time", "weight"}:
                    fail("timeline", f"entry {i + 1}: expected exactly the keys time and weight")
                    continue
                t, w = pt["time"], pt["weight"]
                if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (t, w)):
                    fail("timeline", f"entry {i + 1}: time and weight must be numbers")
                    continue
                if not 0 <= t <= MAX_SECONDS or not -1 <= w <= 1:
                    fail("timeline", f"entry {i + 1}: time must be within 0..{MAX_SECONDS:g} s "
                                     "and weight within -1..1")
                    continue
                rows.append((float(t), float(w)))
            arr = np.array(rows, np.float64).reshape(-1, 2)
            if np.any(np.diff(arr[:, 0]) <= 0):
                fail("timeline", "times must increase")
            timeline = arr
    if found:
        return None, found
    duration = float(timeline[-1, 0]) if timeline is not None else 0.0
    return Preset(path.stem, description, region, float(intensity), tuple(ops), timeline, loop, str(path), duration), []
