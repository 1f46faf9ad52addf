"""Prepare a training/evaluation dataset: aligned face crops, attributes, landmarks, identities.

Usage::

    python -m train.prepare --manifest ../shared/data/faces/manifest.csv --split train,test \\
        --out data/prepared-128 [--size 128] [--max-frames-per-clip 240] [--workers 2]
    python -m train.prepare --videos DIR --out data/my-set    # VoxCeleb id/video/clip.mp4,
                                                              # or one folder per person

Output layout (read by ``train.dataset``)::

    <out>/index.json        {"version": 1, "resolution": R, "align": {...},
                             "clips": [{"id", "file", "identity", "identity_index", "split",
                                        "frames", "fps", "source"}],
                             "identities": [...], "skipped": [{"source", "reason"}]}
    <out>/clips/<id>.npz    crops uint8 (N,R,R,3) RGB; attrs float32 (N,20) AUs 0-5 then
                            pitch/yaw/roll rad (measured, gaps filled, unsmoothed);
                            landmarks float32 (N,478,2) crop pixels; success uint8 (N,);
                            timestamps float64 (N,) s; blendshapes float32 (N,52) 0-1
                            (0 where no face), to re-derive AUs if the mapping changes;
                            au_scale str: the AU scale of attrs ("v2", the calibrated
                            scale of ``attributes_from_face``; files without it: "v1")

Crops use :mod:`icface_video.align` (scale + translation, smoothed over the clip).
Each clip is written under a temporary name and renamed when complete, so a killed run
resumes where it stopped (finished clips are skipped). Clips with no face are skipped
and listed in ``index.json`` under ``skipped``. A frame folder in a manifest
(``kind = frame``, several frames) is one clip at 25 fps.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator

import numpy as np

VIDEO_SUFFIXES = {".mp4", ".mov", ".mpg", ".mpeg", ".avi", ".mkv", ".webm", ".gif", ".m4v"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp"}


@dataclass(frozen=True)
class ClipJob:
    """One clip to prepare: a video file, or an ordered list of frame images."""

    id: str
    identity: str
    split: str
    sources: tuple[str, ...]  # one video, or frame images in order

    @property
    def source(self) -> str:
        return self.sources[0] if len(self.sources) == 1 else str(Path(self.sources[0]).parent)


def _clip_id(rel: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", rel).strip("_")[-120:]


def _natural_key(path: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def jobs_from_manifest(manifest: Path, splits: set[str]) -> list[ClipJob]:
    """Videos and multi-frame folders of the wanted splits, one job per clip."""
    root = manifest.parent
    jobs: list[ClipJob] = []
    folders: dict[str, list[dict]] = {}
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["split"] not in splits:
                continue
            identity = row.get("split_group") or row.get("identity") or row["path"]
            if row["kind"] == "video":
                jobs.append(ClipJob(_clip_id(row["path"]), identity, row["split"], (str(root / row["path"]),)))
            elif row["kind"] == "frame":
                folders.setdefault(str(Path(row["path"]).parent), []).append(row)
    for folder, rows in folders.items():
        if len(rows) < 2:
            continue
        paths = sorted((str(root / r["path"]) for r in rows), key=_natural_key)
        first = rows[0]
        identity = first.get("split_group") or first.get("identity") or folder
        jobs.append(ClipJob(_clip_id(folder), identity, first["split"], tuple(paths)))
    return jobs


def jobs_from_folder(folder: Path, split: str) -> list[ClipJob]:
    """Every video under ``folder``; the identity is its first path component (the person)."""
    jobs = []
    for path in sorted(folder.rglob("*"), key=lambda p: _natural_key(str(p))):
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
            rel = path.relative_to(folder)
            identity = rel.parts[0] if len(rel.parts) > 1 else rel.stem
            jobs.append(ClipJob(_clip_id(str(rel)), identity, split, (str(path),)))
    return jobs


def _frames_of(job: ClipJob) -> Iterator:
    from icface_video.media import FALLBACK_RATE, Frame, iter_frames, load_image

    if len(job.sources) == 1:
        yield from iter_frames(job.sources[0])
        return
    for i, path in enumerate(job.sources):
        yield Frame(i, i / float(FALLBACK_RATE), load_image(path))


def _info_of(job: ClipJob):
    from icface_video.media import FALLBACK_RATE, MediaInfo, probe

    if len(job.sources) == 1:
        return probe(job.sources[0])
    first = probe(job.sources[0])
    return MediaInfo(job.source, False, first.width, first.height, float(FALLBACK_RATE), len(job.sources),
                     len(job.sources) / float(FALLBACK_RATE), 0, False)


def prepare_clip(job: ClipJob, out: Path, size: int, max_frames: int) -> dict:
    """Analyse, align and save one clip; returns its index entry (or raises InputError)."""
    import torch

    torch.set_num_threads(1)
    from icface_video.align import AlignConfig, crop_matrix, transform_points, warp_crop
    from icface_video.attributes import AU_SCALE
    from icface_video.media import FALLBACK_RATE
    from icface_video.track import analyze_frames

    align = AlignConfig(size=size)
    info = _info_of(job)
    track = analyze_frames(_frames_of(job), info, keep_landmarks=True, keep_blendshapes=True)
    assert track.landmarks is not None and track.blendshapes is not None  # both requested above
    n = track.num_frames
    step = max(1, int(np.ceil(n / max_frames)))
    keep = np.arange(0, n, step)
    params = track.smoothed_crop_params(align)
    crops = np.empty((len(keep), size, size, 3), np.uint8)
    lms = np.zeros((len(keep), track.landmarks.shape[1], 2), np.float32)
    wanted = {int(k): j for j, k in enumerate(keep)}
    for frame in _frames_of(job):
        j = wanted.get(frame.index)
        if j is None:
            continue
        m = crop_matrix(params[frame.index], align)
        crops[j] = warp_crop(frame.rgb, m, align)
        if track.success[frame.index]:
            lms[j] = transform_points(track.landmarks[frame.index], m)
    success = track.success[keep].astype(np.uint8)
    target = out / "clips" / f"{job.id}.npz"
    tmp = target.with_name(f".{job.id}.tmp.npz")
    blendshapes = np.nan_to_num(track.blendshapes[keep], nan=0.0)
    np.savez(tmp, crops=crops, attrs=track.raw_attrs[keep], landmarks=lms, success=success,
             timestamps=track.times[keep], blendshapes=blendshapes, au_scale=np.array(AU_SCALE))
    os.replace(tmp, target)
    return _entry(job, target, out, len(keep), (info.fps or float(FALLBACK_RATE)) / step)


def _entry(job: ClipJob, target: Path, out: Path, frames: int, fps: float) -> dict:
    return {"id": job.id, "file": str(target.relative_to(out)), "identity": job.identity,
            "split": job.split, "frames": frames, "fps": round(fps, 3), "source": job.source}


def _run_job(args: tuple) -> tuple[str, dict | None, str | None]:
    job, out, size, max_frames = args
    from icface_video.errors import IcfaceError

    try:
        return job.id, prepare_clip(job, out, size, max_frames), None
    except IcfaceError as exc:
        return job.id, None, str(exc)


def write_index(out: Path, entries: list[dict], skipped: list[dict], size: int) -> None:
    from icface_video.align import AlignConfig

    train_ids = sorted({e["identity"] for e in entries if e["split"] == "train"})
    lookup = {name: i for i, name in enumerate(train_ids)}
    for e in entries:
        e["identity_index"] = lookup.get(e["identity"], -1) if e["split"] == "train" else -1
    index = {"version": 1, "resolution": size, "align": asdict(AlignConfig(size=size)),
             "clips": sorted(entries, key=lambda e: e["id"]), "identities": train_ids,
             "skipped": skipped}
    tmp = out / ".index.json.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / "index.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.prepare", description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="manifest.csv of ../shared/data/faces")
    src.add_argument("--videos", type=Path, help="folder of videos: id/video/clip.mp4 or one folder per person")
    ap.add_argument("--split", default="train,test", help="manifest splits to take (comma-separated)")
    ap.add_argument("--folder-split", default="train", help="split label for --videos clips")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=128, help="crop side in pixels")
    ap.add_argument("--max-frames-per-clip", type=int, default=240)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)

    if args.manifest:
        if not args.manifest.is_file():
            ap.error(f"--manifest {args.manifest}: no such file")
        jobs = jobs_from_manifest(args.manifest, set(args.split.split(",")))
    else:
        if not args.videos.is_dir():
            ap.error(f"--videos {args.videos}: not a folder")
        jobs = jobs_from_folder(args.videos, args.folder_split)
    (args.out / "clips").mkdir(parents=True, exist_ok=True)
    entries: list[dict] = []
    skipped: list[dict] = []
    old = {}
    if (args.out / "index.json").is_file():
        old_index = json.loads((args.out / "index.json").read_text())
        old = {e["id"]: e for e in old_index.get("clips", [])}
    todo = []
    for job in jobs:
        target = args.out / "clips" / f"{job.id}.npz"
        if target.is_file() and job.id in old:
            entries.append(old[job.id])
        else:
            todo.append(job)
    print(f"{len(jobs)} clips, {len(entries)} already prepared, {len(todo)} to do", flush=True)
    start = time.time()
    ctx = get_context("spawn")  # MediaPipe graphs are not fork-safe
    with ProcessPoolExecutor(max_workers=max(1, args.workers), mp_context=ctx) as pool:
        futures = {pool.submit(_run_job, (job, args.out, args.size, args.max_frames_per_clip)): job for job in todo}
        for i, fut in enumerate(as_completed(futures), start=1):
            job = futures[fut]
            _, entry, error = fut.result()
            if entry is None:
                skipped.append({"source": job.source, "reason": error})
                print(f"[{i}/{len(todo)}] skipped {job.source}: {error}", flush=True)
            else:
                entries.append(entry)
                print(f"[{i}/{len(todo)}] {job.id}: {entry['frames']} frames ({time.time() - start:.0f} s)", flush=True)
            if i % 10 == 0:
                write_index(args.out, list(entries), skipped, args.size)
    write_index(args.out, entries, skipped, args.size)
    n_frames = sum(e["frames"] for e in entries)
    print(f"done: {len(entries)} clips, {n_frames} frames, {len(skipped)} skipped, {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
