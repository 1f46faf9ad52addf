"""The evaluated methods: the no-motion baseline and models loaded from ``--method`` specs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from icface_video.model import CHECKPOINT_STATE_NAME

if TYPE_CHECKING:
    from icface_video.model import ReenactmentModel

__all__ = ["DEFAULT_NAME", "NO_MOTION", "Method", "load_methods", "parse_model_spec", "resolve_checkpoint"]

NO_MOTION = "no-motion"
DEFAULT_NAME = "default"


class Method:
    """A way to produce output crops from a source crop and driving attributes."""

    def __init__(self, name: str, model: ReenactmentModel | None = None, path: str | None = None) -> None:
        self.name, self.model, self.path = name, model, path

    def render(self, src: np.ndarray, src_attrs: np.ndarray, attrs: np.ndarray,
               src_landmarks: np.ndarray | None = None) -> np.ndarray:
        """src (R, R, 3) uint8, src_attrs (20,), attrs (K, 20), src_landmarks (478, 2) crop
        pixels (for the eyelid warp) -> (K, R, R, 3) uint8."""
        if self.model is None:
            return np.repeat(src[None], len(attrs), axis=0)
        r, mr = src.shape[0], self.model.resolution
        img = src if r == mr else cv2.resize(src, (mr, mr), interpolation=cv2.INTER_AREA if mr < r else cv2.INTER_CUBIC)
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        lms = None if src_landmarks is None else torch.from_numpy(src_landmarks[None].astype(np.float32) * (mr / r))
        cache = self.model.prepare_source(x, torch.from_numpy(src_attrs[None].astype(np.float32)), lms)
        outs = []
        for i in range(0, len(attrs), 32):
            y = self.model.render(cache, torch.from_numpy(attrs[i:i + 32].astype(np.float32)))
            outs.append(((y.cpu().permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8))
        out = np.concatenate(outs)
        if mr != r:
            out = np.stack([cv2.resize(o, (r, r), interpolation=cv2.INTER_AREA if r < mr else cv2.INTER_CUBIC) for o in out])
        return out


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoints folder with ``latest.json`` -> the folder it points to; else ``path``."""
    latest = path / "latest.json"
    if path.is_dir() and latest.is_file() and not (path / CHECKPOINT_STATE_NAME).is_file():
        return path / json.loads(latest.read_text())["path"]
    return path


def parse_model_spec(text: str, what: str) -> tuple[str, bool | str]:
    """``MODEL``, ``MODEL:no-eyelids`` or ``MODEL:eyelids=FILE`` -> (MODEL, the ``eyelids``
    argument of ``ReenactmentModel.load``). Raises ValueError naming ``what``."""
    path, _, flag = text.partition(":")
    if flag == "":
        return path, True
    if flag == "no-eyelids":
        return path, False
    if flag.startswith("eyelids=") and flag[len("eyelids="):]:
        return path, flag[len("eyelids="):]
    raise ValueError(f"{what}: unknown option {flag!r} (:no-eyelids or :eyelids=FILE)")


def load_methods(specs: list[str], device: str, log) -> tuple[list[Method], list[str]]:
    from icface_video.errors import InputError
    from icface_video.model import WEIGHTS_DIR, ReenactmentModel

    methods, notes = [Method(NO_MOTION)], []
    if not specs:
        try:
            methods.append(Method(DEFAULT_NAME, ReenactmentModel.load(None, device=device), str(WEIGHTS_DIR)))
        except InputError as exc:
            note = f"the shipped default model is missing ({exc}): evaluating the no-motion baseline only"
            log(f"note: {note}")
            notes.append(note)
        return methods, notes
    for spec in specs:
        name, sep, ckpt = spec.partition("=")
        if not sep:
            name, ckpt = Path(spec).name, spec
        if not name or name == NO_MOTION or any(m.name == name for m in methods):
            raise ValueError(f"--method {spec}: the name must be unique and not {NO_MOTION!r}")
        ckpt, eyelids = parse_model_spec(ckpt, f"--method {spec}")
        folder = resolve_checkpoint(Path(ckpt))
        methods.append(Method(name, ReenactmentModel.load(folder, device=device, eyelids=eyelids), str(folder)))
        log(f"method {name}: {folder}")
    return methods, notes
