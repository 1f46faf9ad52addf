"""Full-frame face tracks of the manifest's clips: 3D landmarks, blendshapes, head angles.

The prepared dataset (``train.prepare``) keeps 2D landmarks in crop pixels; fitting the
motion model (``train.fit_motion``) and the full-frame evaluation (``train.evaluate
--full-frames``) need the 478 landmarks in 3D, in full-frame pixels. This module analyses
each video clip of a split once and caches the arrays in
``$ICFACE_CACHE/face-tracks/<clip id>-<max frames>.npz``::

    landmarks  float32 (N, 478, 3)  full-frame pixels (x right, y down; z same units,
                                    smaller = nearer the camera); NaN where no face
    blendshapes float32 (N, 52)     0..1 (NaN where no face), to re-derive AUs
    pose       float32 (N, 3)       pitch, yaw, roll radians (filled where no face)
    success    uint8 (N,)           1 where the face was found
    times      float64 (N,)         seconds

Usage: ``python -m train.face_tracks --split train,test [--max-frames 300]`` (it is also
called by the scripts that need the tracks).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icface_video.attributes import NUM_AUS
from train.offline_weights import cache_dir
from train.prepare import _clip_id

DEFAULT_MANIFEST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces" / "manifest.csv"


@dataclass
class ClipTrack:
    """One clip's cached analysis (arrays as in the module docstring)."""

    id: str
    path: str
    identity: str
    split: str
    landmarks: np.ndarray
    blendshapes: np.ndarray
    pose: np.ndarray
    success: np.ndarray
    times: np.ndarray

    @property
    def aus(self) -> np.ndarray:
        """(N, 17) AUs from the blendshapes with the package's current mapping (0 where no face)."""
        from icface_video.attributes import blendshapes_to_aus

        return blendshapes_to_aus(np.nan_to_num(self.blendshapes))

    @property
    def attrs(self) -> np.ndarray:
        """(N, 20) AUs (the tool's scale) then pitch/yaw/roll (radians)."""
        return self.attrs_on("v2")

    def attrs_on(self, scale: str) -> np.ndarray:
        """(N, 20) AUs on AU scale ``scale`` (``icface_video.attributes.AU_SCALES``), then the angles."""
        from icface_video.attributes import blendshapes_to_aus

        aus = blendshapes_to_aus(np.nan_to_num(self.blendshapes), scale)
        return np.concatenate([aus, self.pose], axis=1).astype(np.float32)


def manifest_videos(manifest: Path, splits: set[str]) -> list[dict]:
    """The manifest's video rows of the wanted splits (``path`` made absolute)."""
    rows = []
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["kind"] == "video" and row["split"] in splits:
                row = dict(row, rel=row["path"])
                row["path"] = str(manifest.parent / row["path"])
                rows.append(row)
    return rows


def track_of(row: dict, max_frames: int, cache: Path | None = None) -> ClipTrack | None:
    """The cached (or newly analysed) track of one manifest video row; None when it has no face."""
    from icface_video.errors import InputError
    from icface_video.track import analyze_media

    rel = row["path"]
    key = hashlib.sha1(f"{rel}|{Path(rel).stat().st_size}".encode()).hexdigest()[:8]
    folder = (cache or cache_dir()) / "face-tracks"
    file = folder / f"{_clip_id(Path(rel).name)}-{key}-{max_frames}.npz"
    meta = dict(id=_clip_id(row.get("rel", rel)), path=rel, identity=row.get("split_group") or row.get("identity") or rel,
                split=row["split"])
    if not file.is_file():
        try:
            t = analyze_media(rel, keep_landmarks=True, keep_blendshapes=True, max_frames=max_frames, workers=1)
        except InputError:
            return None
        assert t.landmarks is not None and t.blendshapes is not None  # both requested above
        folder.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, landmarks=t.landmarks.astype(np.float32), blendshapes=t.blendshapes.astype(np.float32),
                            pose=t.raw_attrs[:, NUM_AUS:].astype(np.float32), success=t.success.astype(np.uint8),
                            times=t.times.astype(np.float64))
        tmp.replace(file)
    with np.load(file) as z:
        return ClipTrack(**meta, landmarks=z["landmarks"], blendshapes=z["blendshapes"], pose=z["pose"],
                         success=z["success"].astype(bool), times=z["times"])


def load_tracks(splits: str, max_frames: int = 300, manifest: Path = DEFAULT_MANIFEST,
                verbose: bool = False) -> list[ClipTrack]:
    """Every video clip of ``splits`` (comma-separated) that has a face, analysed once and cached."""
    out = []
    rows = manifest_videos(Path(manifest), set(splits.split(",")))
    for k, row in enumerate(rows):
        t0 = time.perf_counter()
        track = track_of(row, max_frames)
        if track is not None:
            out.append(track)
        if verbose:
            print(f"[{k + 1}/{len(rows)}] {Path(row['path']).name}: "
                  f"{0 if track is None else int(track.success.sum())} faces, {time.perf_counter() - t0:.1f} s",
                  flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="train,test")
    ap.add_argument("--max-frames", type=int, default=300)
    ap.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    args = ap.parse_args(argv)
    tracks = load_tracks(args.split, args.max_frames, args.manifest, verbose=True)
    print(f"{len(tracks)} clips, {sum(int(t.success.sum()) for t in tracks)} frames with a face")
    return 0


if __name__ == "__main__":
    sys.exit(main())
