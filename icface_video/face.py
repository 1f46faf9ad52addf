"""Face analysis: MediaPipe FaceLandmarker (offline model file) with a YuNet fallback.

The landmarker gives, per face, 478 landmarks, 52 ARKit blendshapes and a 4x4 head-pose
matrix. Its built-in detector is short-range and misses small faces (wide shots, group
photos); when it finds none, YuNet (OpenCV Zoo's full-range detector) locates faces and the landmarker runs again on an enlarged crop around the
chosen one. Results are always in full-frame pixel coordinates.

Both model files ship inside this package (``icface_video/face_models``, sha256-checked at
load); nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import IcfaceError

if TYPE_CHECKING:
    import cv2

LANDMARKER_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"


class ModelMissingError(IcfaceError):
    """A face model file is missing or corrupt; exit code 1."""


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: int | None = None


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence MediaPipe's C++ (glog/absl) start-up chatter, which bypasses Python's sys.stderr.

    Thread-safe: fd 2 is redirected by the first of overlapping callers and restored by
    the last (clips are analysed in two threads at once).
    """
    global _quiet_depth, _quiet_saved
    with _quiet_lock:
        if _quiet_depth == 0:
            try:
                sys.stderr.flush()
                _quiet_saved = os.dup(2)
            except (OSError, ValueError):  # no real fd 2 (e.g. captured by a test runner)
                _quiet_saved = None
            if _quiet_saved is not None:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
                os.close(devnull)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _quiet_saved is not None:
                os.dup2(_quiet_saved, 2)
                os.close(_quiet_saved)
                _quiet_saved = None


def package_file(package: str, relative: str) -> Path | None:
    """A file shipped inside an installed package (found without importing it), or None."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.is_file() else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_VERIFIED: dict[str, str] = {}


MODEL_DIR = Path(__file__).resolve().parent / "face_models"
LANDMARKER_FILE = "face_landmarker.task"
DETECTOR_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
DETECTOR_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"


def _checked(path: Path, expected: str, what: str, verify: bool = True) -> Path:
    """``path`` after a sha256 check (once per process per file)."""
    if not path.is_file():
        raise ModelMissingError(f"{path}: {what} not found: reinstall icface-video "
                                "(the file ships inside the package, in icface_video/face_models)")
    if verify and str(path) not in _VERIFIED:
        got = sha256_of(path)
        if got != expected:
            raise ModelMissingError(f"{path}: sha256 {got[:12]}... is not the expected {what} ({expected[:12]}...); "
                                    "reinstall icface-video")
        _VERIFIED[str(path)] = got
    return path


def landmarker_model_path(verify: bool = True) -> Path:
    """Path of MediaPipe's ``face_landmarker.task`` (float16 v1 bundle), checked by sha256.

    The file ships inside this package (``icface_video/face_models``, Apache-2.0, see the
    README there); the ``ICFACE_LANDMARKER`` environment variable may point to another
    copy of the same file.

    Raises:
        ModelMissingError: file absent, or its sha256 differs from ``LANDMARKER_SHA256``.
    """
    env = os.environ.get("ICFACE_LANDMARKER")
    return _checked(Path(env) if env else MODEL_DIR / LANDMARKER_FILE, LANDMARKER_SHA256,
                    "face landmark model (face_landmarker.task)", verify)


def detector_model_path() -> Path:
    """Path of the YuNet face detector (int8, OpenCV Zoo), used as the fallback; sha256-checked."""
    return _checked(MODEL_DIR / DETECTOR_FILE, DETECTOR_SHA256, "YuNet face detector")


@dataclass(frozen=True)
class FaceObservation:
    """One face found in one frame.

    Attributes:
        landmarks: (478, 3) float32, MediaPipe face mesh in full-frame pixels: x right,
            y down, origin at the top-left corner of the top-left pixel; z is relative
            depth in the same pixel units (smaller = nearer the camera).
        blendshapes: (52,) float32 ARKit blendshape scores 0..1 (MediaPipe order).
        matrix: (4, 4) float32 facial transformation matrix (canonical face -> camera).
        bbox: (4,) float32 x0, y0, x1, y1 pixels, the landmarks' bounding box.
        confidence: 0..1; the fallback detector's score when it was used, else 1.0
            (MediaPipe's Tasks API reports no per-face score).
        fallback: True when found through the YuNet fallback.
    """

    landmarks: np.ndarray
    blendshapes: np.ndarray
    matrix: np.ndarray
    bbox: np.ndarray
    confidence: float
    fallback: bool = False


def _bbox(points: np.ndarray) -> np.ndarray:
    return np.array([points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()], np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _area(b: np.ndarray) -> float:
    return float((b[2] - b[0]) * (b[3] - b[1]))


def _select(boxes: list[np.ndarray], face_index: int, previous: np.ndarray | None) -> int | None:
    """Index of the face to follow: overlap with the previous box, else the face_index-th largest."""
    if not boxes:
        return None
    if previous is not None:
        overlaps = [_iou(b, previous) for b in boxes]
        best = int(np.argmax(overlaps))
        return best if overlaps[best] > 0.05 else None
    order = sorted(range(len(boxes)), key=lambda i: -_area(boxes[i]))
    return order[face_index] if face_index < len(order) else None


def no_face_problem(face_index: int, max_faces: int, where: str) -> str:
    """The problem text when no face was followed: "no face found WHERE", or, when
    ``max_faces`` (the most faces seen in one frame) is 1..``face_index``, how many were found."""
    if 0 < max_faces <= face_index:
        return (f"face index {face_index} asked for, but only {max_faces} face{'s' if max_faces > 1 else ''} "
                f"found {where} (indices 0..{max_faces - 1})")
    return f"no face found {where}"


class FaceAnalyzer:
    """Finds and follows one face through a clip (or in a still).

    Use as a context manager (it owns MediaPipe graphs that must be closed)::

        with FaceAnalyzer(mode="video") as fa:
            for frame in iter_frames(path):
                obs = fa.analyze(frame.rgb, frame.time)   # FaceObservation | None

    Args:
        mode: ``"video"`` (tracking across frames; times must increase) or ``"image"``.
        face_index: which face to follow when several are visible: 0 = largest, 1 = the
            next largest, ... chosen on the first frame with faces, then followed by overlap.
        fallback: use the YuNet detector when the landmarker finds no face.
    """

    def __init__(self, mode: Literal["video", "image"] = "video", face_index: int = 0, fallback: bool = True) -> None:
        if mode not in ("video", "image"):
            raise ValueError(f"mode: expected 'video' or 'image', got {mode!r}")
        if face_index < 0:
            raise ValueError(f"face_index: expected >= 0, got {face_index}")
        self.mode = mode
        self.face_index = face_index
        self.use_fallback = fallback
        self._model = landmarker_model_path()
        self._main = self._make_landmarker(mode, num_faces=face_index + 2)
        self._crop_landmarker: Any | None = None  # IMAGE-mode landmarker for fallback crops, made on demand
        self._detector: cv2.FaceDetectorYN | None = None
        self._previous: np.ndarray | None = None
        self._last_ms = -1
        self._started: set[int] = set()  # landmarkers that have run once
        self.max_faces = 0  # the most faces seen in one frame (landmarker or fallback detector)

    # -- set-up -----------------------------------------------------------------
    def _make_landmarker(self, mode: str, num_faces: int):
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self._model)),
            running_mode=vision.RunningMode.VIDEO if mode == "video" else vision.RunningMode.IMAGE,
            num_faces=num_faces,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        with _quiet_native_stderr():
            return vision.FaceLandmarker.create_from_options(options)

    def _first_quiet(self, call, *args):
        """Run a landmarker call; its first run (graph start-up logging) with native stderr silenced."""
        key = id(getattr(call, "__self__", call))
        if key in self._started:
            return call(*args)
        with _quiet_native_stderr():
            result = call(*args)
        self._started.add(key)
        return result

    def close(self) -> None:
        for lm in (self._main, self._crop_landmarker):
            if lm is not None:
                lm.close()
        self._main = self._crop_landmarker = None

    def __enter__(self) -> "FaceAnalyzer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- analysis ---------------------------------------------------------------
    @staticmethod
    def _faces_from_result(result, width: int, height: int, scale: float = 1.0, offset=(0.0, 0.0)) -> list[FaceObservation]:
        faces = []
        for i, lms in enumerate(result.face_landmarks):
            pts = np.array([(p.x * width, p.y * height, p.z * width) for p in lms], np.float32)
            pts /= scale
            pts[:, 0] += offset[0]
            pts[:, 1] += offset[1]
            bs = np.array([c.score for c in result.face_blendshapes[i]], np.float32)
            mat = np.asarray(result.facial_transformation_matrixes[i], np.float32)
            faces.append(FaceObservation(pts, bs, mat, _bbox(pts), 1.0))
        return faces

    def analyze(self, rgb: np.ndarray, time_s: float = 0.0) -> FaceObservation | None:
        """Find the followed face in one frame.

        Convention:
            rgb: (H, W, 3) uint8 RGB.
            time_s: the frame's time in seconds (video mode; must increase).
            returns: :class:`FaceObservation` in full-frame pixels, or None (no face).
        """
        import mediapipe as mp

        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb: expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
        h, w = rgb.shape[:2]
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        if self.mode == "video":
            ms = max(int(round(time_s * 1000)), self._last_ms + 1)
            self._last_ms = ms
            result = self._first_quiet(self._main.detect_for_video, image, ms)
        else:
            result = self._first_quiet(self._main.detect, image)
        faces = self._faces_from_result(result, w, h)
        self.max_faces = max(self.max_faces, len(faces))
        pick = _select([f.bbox for f in faces], self.face_index, self._previous)
        face = faces[pick] if pick is not None else None
        if face is None and self.use_fallback:
            face = self._fallback(rgb)
        self._previous = face.bbox if face is not None else None
        return face

    def no_face_problem(self, where: str) -> str:
        """Why no face was followed, for an error message: ``where`` is e.g. "in the image".

        When faces were seen but fewer than ``face_index + 1``, it says how many.
        """
        return no_face_problem(self.face_index, self.max_faces, where)

    def _landmarks_in_box(self, rgb: np.ndarray, box: np.ndarray, confidence: float) -> FaceObservation | None:
        """Run the IMAGE-mode landmarker on a square crop 2x the box around its centre."""
        import mediapipe as mp

        h, w = rgb.shape[:2]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = 2.0 * max(box[2] - box[0], box[3] - box[1])
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        s = int(round(side))
        if s < 8:
            return None
        crop: np.ndarray = np.zeros((s, s, 3), np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
        if sx1 <= sx0 or sy1 <= sy0:
            return None
        crop[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
        target = 256
        import cv2

        scale = target / s
        crop = cv2.resize(crop, (target, target), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        if self._crop_landmarker is None:
            self._crop_landmarker = self._make_landmarker("image", num_faces=1)
        result = self._first_quiet(self._crop_landmarker.detect, mp.Image(image_format=mp.ImageFormat.SRGB, data=crop))
        faces = self._faces_from_result(result, target, target, scale=scale, offset=(x0, y0))
        if not faces:
            return None
        f = faces[0]
        return FaceObservation(f.landmarks, f.blendshapes, f.matrix, f.bbox, confidence, fallback=True)

    def _fallback(self, rgb: np.ndarray) -> FaceObservation | None:
        # Cheap first: the box the face had in the previous frame.
        if self._previous is not None:
            face = self._landmarks_in_box(rgb, self._previous, 1.0)
            if face is not None:
                return face
        boxes, scores = self._detect(rgb)
        self.max_faces = max(self.max_faces, len(boxes))
        pick = _select(boxes, self.face_index, self._previous)
        if pick is None:
            return None
        return self._landmarks_in_box(rgb, boxes[pick], scores[pick])

    def _detect(self, rgb: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
        """YuNet on the whole frame (downscaled to <= 1280 px): boxes x0,y0,x1,y1 and scores."""
        import cv2

        if self._detector is None:
            with _quiet_native_stderr():
                self._detector = cv2.FaceDetectorYN.create(str(detector_model_path()), "", (320, 320), 0.6)
        h, w = rgb.shape[:2]
        scale = min(1.0, 1280.0 / max(h, w))
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if scale < 1.0:
            bgr = cv2.resize(bgr, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
        self._detector.setInputSize((bgr.shape[1], bgr.shape[0]))
        with _quiet_native_stderr():
            _, dets = self._detector.detect(bgr)
        if dets is None:
            return [], []
        boxes = [np.array([d[0], d[1], d[0] + d[2], d[1] + d[3]], np.float32) / scale for d in dets]
        return boxes, [float(d[-1]) for d in dets]
