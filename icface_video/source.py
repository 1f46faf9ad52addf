"""Sources: the face being reenacted, a photo or a clip, prepared for the renderers.

A photo is analysed once (face found, aligned and cropped at the network's size) into a
:class:`SourceFrame`; a clip is analysed as a whole into a :class:`SourceClip`, whose
frames are decoded in step with the output. Both are a :class:`Source`: for the output's
frame times they yield batches of the source frames shown, which is all the render loop
(:func:`icface_video.reenact.render_video`) needs to know of them::

    media (decode) -> face / track (analysis) -> Source.batches(times) -> renderers
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

import numpy as np
import torch

from .align import AlignConfig, crop_matrix, landmark_params, transform_points, warp_crop
from .attributes import attributes_from_face
from .errors import InputError
from .face import FaceAnalyzer
from .media import iter_frames
from .smoothing import fill_missing
from .tensors import to_tensor
from .track import FaceTrack, analyze_media

if TYPE_CHECKING:
    from .model import ReenactmentModel, SourceCache

__all__ = ["Source", "SourceFrame", "SourceClip", "analyze_still", "still_from_rgb", "make_source_frame",
           "encode_sources"]


class Source(Protocol):
    """What the render loop reads from a source, photo or clip.

    Convention:
        shape: (H, W) of the source frames in pixels.
        batches(times, size): for output times (N,) s, yields per run of up to ``size``
            consecutive times the source frames shown: a list of one frame per time, or a
            list of ONE frame when that frame is shown for the whole run (a photo: the same
            :class:`SourceFrame` object every run, so whatever is made from it, its
            network encoding, paste-back and mask, can be made once).
    """

    @property
    def shape(self) -> tuple[int, int]: ...

    def batches(self, times: np.ndarray, size: int) -> Iterator[list["SourceFrame"]]: ...


@dataclass
class SourceFrame:
    """One source picture ready for the renderers (a photo is one; a clip yields one per frame).

    Attributes:
        rgb: (H, W, 3) uint8 full frame.
        attrs: (20,) its attributes (AUs 0..5, angles rad).
        landmarks: (478, 3) full-frame pixels.
        matrix: (2, 3) full frame -> crop.
        crop: (1, 3, R, R) float in [-1, 1].
    """

    rgb: np.ndarray
    attrs: np.ndarray
    landmarks: np.ndarray
    matrix: np.ndarray
    crop: torch.Tensor

    @property
    def crop_landmarks(self) -> np.ndarray:
        """(478, 2) float32 landmarks in crop pixels (x right, y down, origin top-left corner)."""
        return transform_points(self.landmarks, self.matrix)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the picture."""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])

    def batches(self, times: np.ndarray, size: int) -> Iterator[list["SourceFrame"]]:
        """A still source (:class:`Source`): ``[self]`` for each run of ``size`` output times."""
        for _ in range(0, len(times), size):
            yield [self]


def encode_sources(model: ReenactmentModel, frames: list[SourceFrame]) -> SourceCache:
    """The model's :class:`~icface_video.model.SourceCache` for one or more source frames
    (crops, attributes and crop landmarks, so the eyelid warp can move the lids)."""
    return model.prepare_source(torch.cat([sf.crop for sf in frames]),
                                torch.from_numpy(np.stack([sf.attrs for sf in frames]).astype(np.float32)),
                                torch.from_numpy(np.stack([sf.crop_landmarks for sf in frames])))


def analyze_still(path: str | Path, size: int, face_index: int = 0) -> SourceFrame:
    """Load a photo (or a clip's first frame), find the face, crop it.

    Raises:
        InputError: unreadable, or no face.
    """
    return still_from_rgb(next(iter_frames(path, max_frames=1)).rgb, size, face_index, path)


def still_from_rgb(rgb: np.ndarray, size: int, face_index: int = 0, name: object = "source") -> SourceFrame:
    """A picture held in memory, (H, W, 3) uint8 RGB, as a :class:`SourceFrame` (``name``: for errors).

    Raises:
        InputError: no face (or fewer than ``face_index + 1``).
    """
    with FaceAnalyzer(mode="image", face_index=face_index) as fa:
        face = fa.analyze(rgb)
    if face is None:
        raise InputError(name, fa.no_face_problem("in the source image"))
    return make_source_frame(rgb, face.landmarks, attributes_from_face(face.blendshapes, face.matrix),
                             landmark_params(face.landmarks), size)


def make_source_frame(rgb: np.ndarray, landmarks: np.ndarray, attrs: np.ndarray, params: np.ndarray,
                      size: int) -> SourceFrame:
    """A :class:`SourceFrame` from a picture and its analysis: ``params`` (3,) crop params
    (:func:`icface_video.align.landmark_params`), ``size`` the crop side R."""
    align = AlignConfig(size=size)
    m = crop_matrix(params, align)
    return SourceFrame(rgb, attrs, landmarks, m, to_tensor(warp_crop(rgb, m, align)))


class SourceClip:
    """A source video whose frames are reenacted in turn, decoded in step with the output.

    For output time t the source frame shown is the last one at or before t; past the
    source's end its last frame is held (documented rule).
    """

    def __init__(self, path: str | Path, size: int, face_index: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.path = str(path)
        self.size = size
        self.track: FaceTrack = analyze_media(path, face_index=face_index, keep_landmarks=True, progress=progress)
        t = self.track
        self.params = t.smoothed_crop_params(AlignConfig(size=size))
        if t.landmarks is None:  # asked for above (keep_landmarks)
            raise RuntimeError(f"{path}: the face track came back without landmarks")
        flat = t.landmarks.reshape(t.num_frames, -1)
        self.landmarks = fill_missing(np.nan_to_num(flat), t.success, t.times).reshape(t.landmarks.shape)
        self.attrs = t.attributes()

    @property
    def times(self) -> np.ndarray:
        return self.track.times

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the clip's frames (upright)."""
        return self.track.info.height, self.track.info.width

    def indices_at(self, times: np.ndarray) -> np.ndarray:
        """(N,) source frame index for each output time: the last frame at or before it, held at the ends."""
        idx = np.searchsorted(self.times, np.asarray(times) + 1e-6, side="right") - 1
        return np.clip(idx, 0, len(self.times) - 1)

    def frames_at(self, times: np.ndarray) -> Iterator[tuple[int, SourceFrame]]:
        """Yield (source frame index, SourceFrame) for each output time, decoding once."""
        idx = self.indices_at(times)
        stream = iter_frames(self.path)
        current = None
        for j in idx:
            while current is None or current.index < j:
                nxt = next(stream, None)
                if nxt is None:
                    break
                current = nxt
            if current is None:  # analysed, but no frame decodes now
                raise InputError(self.path, "no video frames could be decoded")
            yield int(j), make_source_frame(current.rgb, self.landmarks[j], self.attrs[j], self.params[j], self.size)

    def batches(self, times: np.ndarray, size: int) -> Iterator[list[SourceFrame]]:
        """:class:`Source`: the frames shown at each output time, ``size`` times at a time."""
        frames = self.frames_at(times)
        for _ in range(0, len(times), size):
            yield [sf for _, sf in islice(frames, size)]
