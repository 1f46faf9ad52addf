"""The ``--preview`` outputs of a render: a side-by-side video and a contact sheet.

``<out>.preview.mp4`` shows per output frame: source | driver (when a video) | result |
the generated face crop, enlarged; ``<out>.contact.png`` stacks six of those rows, evenly
spaced over the render. Both are written under a temporary name and take their final
names only when the render succeeds.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from .encode import EncodeConfig, VideoEncoder
from .media import Frame, iter_frames
from .outputs import atomic_output, is_sequence, sequence_stem

__all__ = ["Preview"]


def _panel(rgb: np.ndarray, height: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    width = max(2, int(round(w * height / h / 2)) * 2)
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


class Preview:
    """Side-by-side video (source | driver | result | generated face, enlarged) and a contact sheet of a few frames."""

    def __init__(self, output: Path, fps: Fraction | float, total: int, overwrite: bool, driver: str | None,
                 height: int = 256) -> None:
        stem = sequence_stem(output) if is_sequence(output) else output.stem
        self.video_path = output.with_name(stem + ".preview.mp4")
        self.sheet_path = output.with_name(stem + ".contact.png")
        self.height = height
        self.fps = fps
        self.picks = set(np.linspace(0, max(total - 1, 0), num=min(6, total)).round().astype(int).tolist())
        self.sheet: list[np.ndarray] = []
        self._driver = iter_frames(driver) if driver else None
        self._driver_frame: Frame | None = None
        self._ctx = atomic_output(self.video_path, overwrite)
        self._tmp: Path | None = None
        self._enc: VideoEncoder | None = None
        self._overwrite = overwrite

    def _driver_at(self, t: float) -> np.ndarray | None:
        if self._driver is None:
            return None
        while self._driver_frame is None or self._driver_frame.time + 1e-6 < t:
            nxt = next(self._driver, None)
            if nxt is None:
                break
            self._driver_frame = nxt
        return self._driver_frame.rgb if self._driver_frame is not None else None

    def add(self, index: int, t: float, source: np.ndarray, result: np.ndarray, face: np.ndarray | None = None) -> None:
        """One row: source | driver (if a video) | result | the generated face crop, enlarged."""
        panels = [_panel(source, self.height)]
        drv = self._driver_at(t)
        if drv is not None:
            panels.append(_panel(drv, self.height))
        panels.append(_panel(result, self.height))
        if face is not None:
            panels.append(cv2.resize(face, (self.height, self.height), interpolation=cv2.INTER_CUBIC))
        row = np.concatenate(panels, axis=1)
        if self._enc is None:
            self._tmp = self._ctx.__enter__()
            self._enc = VideoEncoder(self._tmp, row.shape[1], row.shape[0], self.fps, EncodeConfig(crf=23, preset="veryfast"))
        self._enc.write(row)
        if index in self.picks:
            self.sheet.append(row)

    def close(self, ok: bool) -> None:
        if self._enc is None:
            return
        if ok:
            self._enc.close()
            self._ctx.__exit__(None, None, None)
            with atomic_output(self.sheet_path, self._overwrite) as tmp:
                sheet = np.concatenate(self.sheet, axis=0) if self.sheet else np.zeros((2, 2, 3), np.uint8)
                cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        else:
            self._enc.__exit__(RuntimeError, None, None)
            self._ctx.__exit__(RuntimeError, RuntimeError("failed"), None)
