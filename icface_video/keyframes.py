"""Keyframe animation: attribute values at given times, interpolated smoothly.

A keyframe file is TOML (or CSV with a ``time`` column and attribute columns)::

    [[key]]
    time = 0.0          # seconds
    AU12 = 0
    [[key]]
    time = 1.0
    AU12 = 4.0
    yaw = "15deg"       # angles: radians, or strings with deg/rad

Each attribute is interpolated (smoothstep easing) between the keys that name it and held
after its last key. Before its first key it starts at the source's own value at t = 0
and eases into that key (a smile keyed only at 1.5 s grows from the source's own mouth
over the first 1.5 s); attributes no key names keep the source's own values. Keys are
absolute values (AUs 0..5, angles within +-90 degrees) at times 0..3600 s.
"""

from __future__ import annotations

import csv
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .attributes import NUM_ATTRS, clip_aus
from .controls import MAX_SECONDS, attr_index, check_value, parse_quantity
from .errors import InputError
from .presets import smooth_interp


@dataclass(frozen=True)
class Keyframes:
    """Parsed keys: for each attribute index, (K, 2) array of (time s, value)."""

    path: str
    keys: dict[int, np.ndarray]

    @property
    def duration(self) -> float:
        return max(float(k[-1, 0]) for k in self.keys.values())

    def evaluate(self, base: np.ndarray, times: np.ndarray) -> np.ndarray:
        """(N, 20) track: ``base`` (20,) with keyed attributes interpolated at ``times`` (s).

        An attribute whose first key is later than t = 0 starts from ``base`` at t = 0.
        """
        base = np.asarray(base, np.float32)
        out = np.broadcast_to(base, (len(times), NUM_ATTRS)).copy()
        for index, k in self.keys.items():
            if k[0, 0] > 0:
                k = np.vstack([[0.0, float(base[index])], k])
            out[:, index] = smooth_interp(times, k[:, 0], k[:, 1])
        clip_aus(out)
        return out


def _rows_from_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        return [{k.strip(): v.strip() for k, v in row.items() if k and v and v.strip()} for row in reader]


def load_keyframes(path: str | Path) -> Keyframes:
    """Read and validate a keyframe file (``.toml`` or ``.csv``).

    Raises:
        InputError: unreadable, syntax error, missing ``time``, unknown attribute,
            bad or out-of-range value, times not increasing per attribute.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "no such keyframe file")
    try:
        if p.suffix.lower() == ".csv":
            rows = _rows_from_csv(p)
        else:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
            unknown = set(data) - {"key"}
            if unknown:
                raise InputError(p, f"unknown key(s) {sorted(unknown)}: expected [[key]] entries")
            rows = data.get("key", [])
    except tomllib.TOMLDecodeError as exc:
        raise InputError(p, f"TOML syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(p, f"cannot read keyframes ({exc.__class__.__name__})") from None
    if not rows:
        raise InputError(p, "no keyframes")
    per_attr: dict[int, list[tuple[float, float]]] = {}
    for n, row in enumerate(rows, start=1):
        if "time" not in row:
            raise InputError(p, f"key {n}: missing time")
        try:
            t = float(row["time"])
        except (TypeError, ValueError):
            raise InputError(p, f"key {n}: time {row['time']!r} is not a number") from None
        if not 0 <= t <= MAX_SECONDS:  # also refuses NaN
            raise InputError(p, f"key {n}: time {row['time']} must be within 0..{MAX_SECONDS:g} s")
        for name, raw in row.items():
            if name == "time":
                continue
            try:
                index = attr_index(name)
                value = parse_quantity(str(raw), index) if not isinstance(raw, (int, float)) or isinstance(raw, bool) else float(raw)
            except ValueError as exc:
                raise InputError(p, f"key {n}: {name}: {exc}") from None
            problem = check_value("set", index, value)
            if problem:
                raise InputError(p, f"key {n}: {problem}")
            per_attr.setdefault(index, []).append((t, value))
    if not per_attr:
        raise InputError(p, "keys name no attribute")
    keys = {}
    for index, pts in per_attr.items():
        arr = np.array(sorted(pts), np.float64)
        if np.any(np.diff(arr[:, 0]) <= 0):
            raise InputError(p, "two keys at the same time for one attribute")
        keys[index] = arr
    return Keyframes(str(p), keys)
