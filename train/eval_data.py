"""The evaluation's data: any accepted ``--data`` resolved to prepared clips, clips loaded, drivers paired.

``--data`` is a prepared dataset folder (``index.json``, :mod:`train.prepare`), a manifest
or a folder of clips; the last two are prepared once into a cache folder
(:func:`resolve_data`). Protocol: :mod:`train.evaluate`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icface_video.attributes import from_scale
from train.offline_weights import cache_dir

__all__ = ["Clip", "load_clip", "pair_drivers", "resolve_data", "select_entries"]


@dataclass
class Clip:
    """The frames of one prepared clip that the evaluation uses.

    ``src`` is the source frame; ``frames`` the evenly spaced target (and driver) frames.
    Arrays hold only those frames, source first: crops (1+K, R, R, 3) uint8, attrs
    (1+K, 20), landmarks (1+K, 478, 2) crop pixels, times (1+K,).
    """

    id: str
    identity: str
    src: int
    frames: np.ndarray
    crops: np.ndarray
    attrs: np.ndarray
    landmarks: np.ndarray
    times: np.ndarray

    @property
    def resolution(self) -> int:
        return int(self.crops.shape[1])


def select_entries(entries: list[dict], max_clips: int | None) -> list[dict]:
    """Up to ``max_clips`` clips, deterministically: sorted by id, one per person first."""
    ordered = sorted(entries, key=lambda e: e["id"])
    if max_clips is None or max_clips >= len(ordered):
        return ordered
    chosen, people = [], set()
    for e in ordered:
        if e["identity"] not in people:
            chosen.append(e)
            people.add(e["identity"])
    chosen += [e for e in ordered if e not in chosen]
    return sorted(chosen[:max_clips], key=lambda e: e["id"])


def load_clip(folder: Path, entry: dict, max_frames: int) -> Clip | None:
    """Read one prepared clip; None when it has fewer than two frames with a face."""
    with np.load(folder / entry["file"]) as data:
        success = data["success"].astype(bool)
        ok = np.flatnonzero(success)
        if len(ok) < 2:
            return None
        src, rest = int(ok[0]), ok[1:]
        if len(rest) > max_frames:
            rest = rest[np.unique(np.round(np.linspace(0, len(rest) - 1, max_frames)).astype(int))]
        keep = np.concatenate([[src], rest])
        # attributes on the tool's scale (v2): the model converts them to its own, and the
        # renders' re-extracted attributes (attributes_from_face) are on it too
        scale = str(data["au_scale"]) if "au_scale" in data.files else "v1"
        attrs = from_scale(data["attrs"][keep].astype(np.float32), scale)
        return Clip(entry["id"], str(entry["identity"]), src, rest, data["crops"][keep],
                    attrs, data["landmarks"][keep].astype(np.float32),
                    data["timestamps"][keep].astype(np.float64))


def _prepare_into(jobs: list, out: Path, size: int, max_frames_per_clip: int, log) -> list[str]:
    """Prepare ``jobs`` into ``out`` with :func:`train.prepare.prepare_clip` (cached, resumable)."""
    from icface_video.errors import IcfaceError
    from train.prepare import prepare_clip, write_index

    (out / "clips").mkdir(parents=True, exist_ok=True)
    old: dict[str, dict] = {}
    skipped: list[dict] = []
    if (out / "index.json").is_file():
        index = json.loads((out / "index.json").read_text())
        old = {e["id"]: e for e in index.get("clips", [])}
        skipped = list(index.get("skipped", []))
    done_sources = {s["source"] for s in skipped}
    entries = [e for e in old.values() if (out / e["file"]).is_file()]
    have = {e["id"] for e in entries}
    todo = [j for j in jobs if j.id not in have and j.source not in done_sources]
    for i, job in enumerate(todo, 1):
        start = time.time()
        try:
            entries.append(prepare_clip(job, out, size, max_frames_per_clip))
            log(f"prepared [{i}/{len(todo)}] {job.id} ({time.time() - start:.1f} s)")
        except IcfaceError as exc:
            skipped.append({"source": job.source, "reason": str(exc)})
            log(f"skipped {job.source}: {exc}")
        write_index(out, entries, skipped, size)
    if not (out / "index.json").is_file():
        write_index(out, entries, skipped, size)
    wanted = {j.id for j in jobs}
    return [e["id"] for e in entries if e["id"] in wanted]


def resolve_data(path: Path, split: str, max_clips: int | None, cache: Path | None, size: int,
                 log) -> tuple[Path, list[dict], list[dict]]:
    """(prepared folder, the chosen index entries, skipped clips) for any accepted ``--data``."""
    from train.prepare import jobs_from_folder, jobs_from_manifest

    if path.is_dir() and (path / "index.json").is_file():
        index = json.loads((path / "index.json").read_text())
        entries = [e for e in index["clips"] if not split or e["split"] == split]
        return path, select_entries(entries, max_clips), index.get("skipped", [])
    if path.is_file() and path.suffix.lower() == ".csv":
        jobs = jobs_from_manifest(path, {split})
    elif path.is_dir() and (path / "manifest.csv").is_file():
        path = path / "manifest.csv"
        jobs = jobs_from_manifest(path, {split})
    elif path.is_dir():
        jobs = jobs_from_folder(path, split)
    else:
        raise FileNotFoundError(f"--data {path}: not a prepared dataset, a manifest.csv or a folder of clips")
    if not jobs:
        raise FileNotFoundError(f"--data {path}: no clips found (split {split!r})")
    picked_ids = {e["id"] for e in select_entries([{"id": j.id, "identity": j.identity} for j in jobs], max_clips)}
    jobs = [j for j in jobs if j.id in picked_ids]
    if cache is None:
        tag = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        cache = cache_dir() / "eval-prepared" / f"{path.stem}-{split}-{size}-{tag}"
    log(f"preparing {len(jobs)} clips into {cache} (cached)")
    ids = set(_prepare_into(jobs, cache, size, 240, log))
    index = json.loads((cache / "index.json").read_text())
    entries = [e for e in index["clips"] if e["id"] in ids]
    return cache, sorted(entries, key=lambda e: e["id"]), index.get("skipped", [])


def pair_drivers(clips: list[Clip]) -> dict[str, str | None]:
    """Driver clip of each clip: the next clip by id (cyclic) of a different person."""
    out: dict[str, str | None] = {}
    n = len(clips)
    for i, c in enumerate(clips):
        out[c.id] = None
        for step in range(1, n):
            d = clips[(i + step) % n]
            if d.identity != c.identity:
                out[c.id] = d.id
                break
    return out
