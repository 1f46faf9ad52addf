"""The evaluation's contact sheet: the most expressive frames of each protocol, one row each."""

from __future__ import annotations

import cv2
import numpy as np

from icface_video.attributes import AU_NAMES, NUM_AUS
from train.eval_data import Clip

__all__ = ["build_sheet", "pick_sheet_rows"]

_AU = {n: i for i, n in enumerate(AU_NAMES)}
# (label, score function of (driving attrs, source attrs), threshold)
_SHEET_CATEGORIES = (
    ("open mouth", lambda a, s: a[:, _AU["AU26"]], 1.0),
    ("smile", lambda a, s: a[:, _AU["AU12"]], 1.5),
    ("closed eyes", lambda a, s: a[:, _AU["AU45"]], 2.5),
    ("raised brows", lambda a, s: (a[:, _AU["AU01"]] + a[:, _AU["AU02"]]) / 2, 1.0),
    ("head turn", lambda a, s: np.degrees(np.abs(a[:, NUM_AUS:] - s[NUM_AUS:]).max(axis=1)), 10.0),
)


def pick_sheet_rows(clips: list[Clip], drivers: dict[str, str | None]) -> list[tuple[str, str, str, int]]:
    """Rows of the contact sheet: (label, protocol, source clip id, index into targets)."""
    by_id = {c.id: c for c in clips}
    rows: list[tuple[str, str, str, int]] = []
    used: set[tuple[str, str, int]] = set()

    def best(proto: str, score, threshold: float) -> tuple[float, str, int] | None:
        """Highest-scoring unused frame, preferring a clip not shown yet when one passes."""
        shown = {cid for p, cid, _ in used if p == proto}
        fresh = [c for c in clips if c.id not in shown]
        for pool in (fresh, clips):
            top = _best_in(pool, proto, score)
            if top is not None and top[0] >= threshold:
                return top
        return top

    def _best_in(pool: list[Clip], proto: str, score) -> tuple[float, str, int] | None:
        top = None
        for c in pool:
            if proto == "self":
                drv = c
            else:
                driver_id = drivers.get(c.id)
                if driver_id is None:
                    continue
                drv = by_id[driver_id]
            vals = score(drv.attrs[1:], c.attrs[0])
            for j in np.argsort(-vals):
                if (proto, c.id, int(j)) not in used:
                    if top is None or vals[j] > top[0]:
                        top = (float(vals[j]), c.id, int(j))
                    break
        return top

    for proto, cats in (("self", _SHEET_CATEGORIES), ("cross", _SHEET_CATEGORIES[:2])):
        for label, score, threshold in cats:
            found = best(proto, score, threshold)
            if found is not None and found[0] >= threshold:
                rows.append((f"{proto}: {label}", proto, found[1], found[2]))
                used.add((proto, found[1], found[2]))
    if not rows and clips:  # nothing expressive: show a plain frame
        c = clips[0]
        rows.append(("self", "self", c.id, len(c.frames) // 2))
    return rows


def _put(img: np.ndarray, text: str, xy: tuple[int, int], scale: float = 0.38) -> None:
    cv2.putText(img, text, xy, cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), 1, cv2.LINE_AA)


def build_sheet(rows: list[dict], method_names: list[str], resolution: int) -> np.ndarray:
    """rows: {"label", "clip", "source", "target", "outputs": {name: img}} -> RGB uint8 image."""
    r, label_w, head_h, pad = resolution, 150, 22, 4
    cols = ["source", "target / driver"] + method_names
    h = head_h + len(rows) * (r + pad)
    w = label_w + len(cols) * (r + pad)
    sheet = np.full((h, w, 3), 255, np.uint8)
    for j, name in enumerate(cols):
        _put(sheet, name[:22], (label_w + j * (r + pad) + 2, 15))
    for i, row in enumerate(rows):
        y = head_h + i * (r + pad)
        _put(sheet, row["label"], (4, y + 16))
        clip = row["clip"]
        for k in range(0, min(len(clip), 60), 20):
            _put(sheet, clip[k:k + 20], (4, y + 34 + (k // 20) * 14), 0.3)
        for line_no, text in enumerate(row.get("info", [])):
            _put(sheet, text, (4, y + 84 + line_no * 14), 0.3)
        imgs = [row["source"], row["target"]] + [row["outputs"][n] for n in method_names]
        for j, img in enumerate(imgs):
            x = label_w + j * (r + pad)
            sheet[y:y + r, x:x + r] = img if img.shape[0] == r else cv2.resize(img, (r, r))
    return sheet
