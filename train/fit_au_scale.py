"""Fit the AU scale calibration (v1 -> v2) to OpenFace 2.x and write ``icface_video/au_calibration.json``.

``python -m train.fit_au_scale [--markdown]``

Data: clips with the OpenFace 2.x output beside them (default: the two ICface test clips
``icface/test_code_released_new/00116`` and ``00296``, ``.mp4`` + ``.csv``, under the data
folder ``$ICFACE_DATA`` or ``../shared/data/faces``). Each clip is analysed as ``extract
--smooth none`` does; frames are aligned by row (both tools write one row per decoded
frame; the counts must agree) and only frames where both found the face are used.

Per AU, from this tool's raw AUs ``x`` (scale v1) and OpenFace's ``AU*_r`` ``y``:

* **offset + gain** where ``x`` and ``y`` correlate (Pearson r >= 0.5 over the fitting
  frames) and ``x`` moves (standard deviation >= 0.2): least squares of
  ``y ~ clip(a + b x, 0, 5)`` with ``a <= 0`` (0 must stay 0: no blendshape activity is
  no AU) and ``0.05 <= b <= 5``;
* **offset only** otherwise: gain 1, ``a = -median(x - y)`` when that is below -0.05
  (our resting reading is above OpenFace's), else no change at all. A low correlation gives
  no trustworthy gain, so the old mapping's gain is kept.

The line becomes a strictly increasing piecewise-linear curve (so that the map is
invertible and models trained on v1 can be fed exactly): knots at (0, 0); at the line's
zero crossing ``-a/b`` (value ``0.05 * x``: a slope of 0.05 below it, "at rest"); at the
fitting data's 99.5th percentile of ``x`` (the line's value); and at ``x = 5`` (the
line's value, capped at 5, never a slope below 0.05).

``--markdown`` prints the leave-one-clip-out table of the README (fitted on one clip,
measured on the other): per AU and clip, OpenFace's mean, this tool's mean before and
after, the mean absolute difference before -> after and the correlation before -> after.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from scipy.optimize import least_squares

from icface_video.attributes import AU_MAX, AU_NAMES, CALIBRATION_PATH, NUM_AUS, AuCalibration, blendshapes_to_aus

CLIPS = ("icface/test_code_released_new/00116", "icface/test_code_released_new/00296")
MIN_R = 0.5        # correlation needed to fit a gain
MIN_SD = 0.2       # spread of our AU needed to fit a gain
MIN_SLOPE = 0.05   # every segment of the curve rises at least this much per unit
HIGH_QUANTILE = 0.995
MIN_OFFSET = 0.05  # offsets smaller than this (in AU units) are left out


@dataclass(frozen=True)
class ClipAus:
    """One clip's aligned AUs: ``ours`` (N, 17) on scale v1, ``openface`` (N, 17), both found."""

    name: str
    ours: np.ndarray
    openface: np.ndarray


@dataclass(frozen=True)
class AuFit:
    """One AU's fit: ``mode`` ("offset+gain" | "offset" | "unchanged"), line ``offset`` + ``gain`` * x,
    Pearson ``r`` on the fitting frames, and the curve's knots ``v1`` -> ``v2``."""

    mode: str
    offset: float
    gain: float
    r: float
    v1: list[float]
    v2: list[float]


def data_root() -> Path:
    return Path(os.environ.get("ICFACE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data" / "faces")


def measure_clip(video: str | Path, openface_csv: str | Path) -> ClipAus:
    """Analyse ``video`` (no smoothing) and align it with its OpenFace CSV, frame by frame.

    Raises:
        InputError: unreadable video or CSV, or frame counts that differ.
    """
    from icface_video.csvio import read_attributes_csv
    from icface_video.errors import InputError
    from icface_video.track import analyze_media

    track = analyze_media(video, keep_blendshapes=True)
    assert track.blendshapes is not None  # requested above
    table = read_attributes_csv(openface_csv)
    if table.num_frames != track.num_frames:
        raise InputError(openface_csv, f"{table.num_frames} rows but {video} has {track.num_frames} frames")
    ok = track.success & table.success
    ours = blendshapes_to_aus(np.nan_to_num(track.blendshapes[ok]), scale="v1")
    return ClipAus(Path(video).stem, ours.astype(np.float64), table.attrs[ok, :NUM_AUS].astype(np.float64))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() < 1e-6 or y.std() < 1e-6:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def _knots(a: float, b: float, x: np.ndarray) -> tuple[list[float], list[float]]:
    """The strictly increasing curve of the line a + b x (see the module docstring)."""
    hi = float(np.quantile(x, HIGH_QUANTILE))
    lo = -a / b if a < 0 else 0.0
    if lo >= hi - 0.05:  # the data never rises above the zero crossing: nothing to map
        return [0.0, AU_MAX], [0.0, AU_MAX]
    xs, ys = [0.0], [0.0]
    if lo > 0.02:
        xs.append(lo)
        ys.append(MIN_SLOPE * lo)
    if hi < AU_MAX - 0.05:
        yh = min(max(a + b * hi, ys[-1] + MIN_SLOPE * (hi - xs[-1])), AU_MAX - MIN_SLOPE * (AU_MAX - hi))
        xs.append(hi)
        ys.append(yh)
    xs.append(AU_MAX)  # first: xs[-1] below is AU_MAX, so its MIN_SLOPE term is 0 (as the curves were fitted)
    ys.append(min(max(a + b * AU_MAX, ys[-1] + MIN_SLOPE * (AU_MAX - xs[-1])), AU_MAX))
    return xs, ys


def fit_au(x: np.ndarray, y: np.ndarray) -> AuFit:
    """Fit one AU's curve from our v1 values ``x`` (N,) to OpenFace's ``y`` (N,)."""
    r = _pearson(x, y)
    if r >= MIN_R and x.std() >= MIN_SD:
        mode = "offset+gain"
        a, b = least_squares(lambda p: np.clip(p[0] + p[1] * x, 0.0, AU_MAX) - y, [-0.01, 1.0],
                             bounds=([-AU_MAX, MIN_SLOPE], [0.0, AU_MAX])).x
    else:
        a, b = min(0.0, -float(np.median(x - y))), 1.0
        mode = "offset" if a <= -MIN_OFFSET else "unchanged"
    xs, ys = _knots(float(a), float(b), x) if mode != "unchanged" else ([0.0, AU_MAX], [0.0, AU_MAX])
    if xs == [0.0, AU_MAX] and ys == [0.0, AU_MAX]:
        mode, a, b = "unchanged", 0.0, 1.0
    return AuFit(mode, round(float(a), 4), round(float(b), 4), round(r, 4), xs, ys)


def fit_calibration(clips: list[ClipAus]) -> tuple[AuCalibration, dict[str, AuFit]]:
    """Fit every AU on the frames of ``clips`` pooled; returns the calibration and the per-AU fits."""
    x = np.concatenate([c.ours for c in clips])
    y = np.concatenate([c.openface for c in clips])
    fits = {au: fit_au(x[:, j], y[:, j]) for j, au in enumerate(AU_NAMES)}
    doc = {
        "scale": "v2",
        "maps": "v1 (raw blendshape mapping) -> v2 (OpenFace 2.x intensities); piecewise linear",
        "command": "python -m train.fit_au_scale",
        "fitted_on": [c.name for c in clips],
        "frames": int(len(x)),
        "fits": {au: {"mode": f.mode, "offset": f.offset, "gain": f.gain, "r": f.r} for au, f in fits.items()},
        "aus": {au: {"v1": f.v1, "v2": f.v2} for au, f in fits.items()},
    }
    return AuCalibration.from_dict(AuCalibration.from_dict(doc).to_dict()), fits


@dataclass(frozen=True)
class AuAgreement:
    """Agreement of one AU with OpenFace on one clip: means, mean |difference|, Pearson r."""

    openface_mean: float
    before_mean: float
    after_mean: float
    mad_before: float
    mad_after: float
    r_before: float
    r_after: float
    openface_sd: float
    ours_sd: float


def agreement(cal: AuCalibration, clip: ClipAus) -> dict[str, AuAgreement]:
    """Per AU: how ``clip``'s v1 AUs (before) and their calibrated v2 values (after) agree with OpenFace."""
    from icface_video.attributes import from_scale

    after = from_scale(clip.ours.astype(np.float32), "v1", calibration=cal).astype(np.float64)
    out = {}
    for j, au in enumerate(AU_NAMES):
        x, z, y = clip.ours[:, j], after[:, j], clip.openface[:, j]
        out[au] = AuAgreement(float(y.mean()), float(x.mean()), float(z.mean()), float(np.abs(x - y).mean()),
                              float(np.abs(z - y).mean()), _pearson(x, y), _pearson(z, y), float(y.std()),
                              float(x.std()))
    return out


def markdown_table(clips: list[ClipAus], fits: dict[str, AuFit]) -> str:
    """The README's leave-one-clip-out table (two clips: each measured with the fit on the other)."""
    loo = {}
    for i, clip in enumerate(clips):
        cal, _ = fit_calibration([c for k, c in enumerate(clips) if k != i])
        loo[clip.name] = agreement(cal, clip)
    head = "| AU | map (both clips) | " + " | ".join(
        f"{c.name}: OpenFace mean, ours before -> after | {c.name}: mean abs diff | {c.name}: r" for c in clips) + " |"
    lines = [head, "| --- | --- | " + " | ".join(["---"] * 3 * len(clips)) + " |"]
    for au in AU_NAMES:
        f = fits[au]
        desc = {"offset+gain": f"{f.offset:+.2f} + {f.gain:.2f} x", "offset": f"{f.offset:+.2f} + x",
                "unchanged": "unchanged"}[f.mode]
        cells = []
        for c in clips:
            g = loo[c.name][au]
            cells += [f"{g.openface_mean:.2f}, {g.before_mean:.2f} -> {g.after_mean:.2f}",
                      f"{g.mad_before:.2f} -> **{g.mad_after:.2f}**", f"{g.r_before:.2f} -> {g.r_after:.2f}"]
        lines.append(f"| {au} | {desc} (r {f.r:.2f}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@click.command()
@click.option("--data", "data", default=None, help="Data folder (default $ICFACE_DATA or ../shared/data/faces).")
@click.option("--out", default=str(CALIBRATION_PATH), show_default=True, help="Calibration file to write.")
@click.option("--markdown", is_flag=True, help="Also print the leave-one-clip-out table for the README.")
def main(data: str | None, out: str, markdown: bool) -> None:
    """Fit the AU calibration on the ICface clips' OpenFace outputs."""
    from icface_video.errors import InputError

    root = Path(data) if data else data_root()
    try:
        clips = [measure_clip(root / f"{c}.mp4", root / f"{c}.csv") for c in CLIPS]
    except InputError as exc:
        raise click.ClickException(str(exc)) from exc
    cal, fits = fit_calibration(clips)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    tmp.write_text(json.dumps(cal.to_dict(), indent=1) + "\n")
    tmp.replace(out)
    for au, f in fits.items():
        click.echo(f"{au}: {f.mode:12s} offset {f.offset:+.3f} gain {f.gain:.3f} r {f.r:.2f}  knots "
                   + " ".join(f"({x:.2f}, {y:.2f})" for x, y in zip(f.v1, f.v2)))
    click.echo(f"wrote {out}", err=True)
    if markdown:
        click.echo(markdown_table(clips, fits))


if __name__ == "__main__":
    sys.exit(main())
