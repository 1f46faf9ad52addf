"""The geometric renderer: warp the full-resolution source frame onto target landmarks.

Given the source frame, its 478 landmarks and target landmarks from the motion model
(:mod:`icface_video.motion`), every output pixel fetches the source pixel that shows the
same point of the head, triangle by triangle (a piecewise-affine warp), at the frame's
own resolution:

* **Triangles.** MediaPipe's face tessellation (852), a fan over each eye opening from
  its iris centre (so the iris and sclera move with the eye), a fan over the mouth
  opening from its centre, a strip from the face oval to a *hair ring* that moves with
  the head (hair, ears), and a strip from the hair ring to a *fixed ring* that does not
  move (background, shoulders). Outside the fixed ring the frame is untouched (exactly).
* **Depth order.** Triangles are drawn far to near (painter's algorithm on the target
  depth), after the two rings, so a turned head never shows its far cheek over its nose.
  Where neighbouring output pixels fetch from far apart (an occlusion edge), the result
  is softened over about a pixel instead of showing a staircase.
* **Hidden skin.** A face triangle that the source shows foreshortened or from behind
  (a turned source) but the target shows is fetched from its mirror triangle on the
  other half of the face (the mesh is left/right symmetric; Hassner et al., CVPR 2015).
* **Mouth interior.** Where the target mouth opens wider than the source's, the opening
  is drawn (a dark cavity shaded towards the lips, and the upper teeth below the upper
  lip), never a stretched lip; where the source's own mouth is open, its interior is
  warped.

Pixel coordinates follow OpenCV (pixel centres at integers, origin top-left).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .attributes import AU_NAMES
from .mesh_topology import (EYE_CONTOURS, FACE_OVAL, INNER_LIP_UPPER, INNER_LIPS, IRIS_CENTRES, NUM_LANDMARKS,
                            OUTER_LIPS)
from .motion import head_frame

if TYPE_CHECKING:
    from .eyelids import EyelidConfig
    from .motion import MotionModel

#: The ways a frame can be rendered (``--renderer``): this module, or the ICface generator.
RENDERERS: tuple[str, ...] = ("geometry", "network")

_OVAL = np.array(FACE_OVAL)
_N_OVAL = len(FACE_OVAL)
# Vertex layout: 478 landmarks, the hair ring, the fixed ring, the mouth centre.
_HAIR0 = NUM_LANDMARKS
_FIXED0 = _HAIR0 + _N_OVAL
_MOUTH_C = _FIXED0 + _N_OVAL
NUM_VERTICES = _MOUTH_C + 1
_AU45 = AU_NAMES.index("AU45")


@dataclass(frozen=True)
class GeometryConfig:
    """Settings of the geometric renderer.

    Attributes:
        hair_ring: the hair ring's distance from the head centre, in units of the face
            oval's (it moves with the head).
        fixed_ring: the fixed ring's, same units (nothing outside it moves).
        mirror_below: a face triangle is fetched from its mirror when its source area is
            below this fraction of its target area (and the mirror's is larger).
        mouth_draw: (full, none): the mouth interior is fully drawn where the source's
            opening is at most ``full`` of the target's, and not at all above ``none``.
        soften: blur sigma (px) of the occlusion edges.
        max_side: the warp is computed on a map of at most this many pixels a side and
            sampled up to the frame's pixels (bounds time and memory for large faces).
    """

    hair_ring: float = 1.3
    fixed_ring: float = 2.2
    mirror_below: float = 0.35
    mouth_draw: tuple[float, float] = (0.35, 0.8)
    soften: float = 0.8
    max_side: int = 720


@dataclass(frozen=True)
class _Topology:
    triangles: np.ndarray  # (T, 3) vertex indices
    kind: np.ndarray       # (T,) 0 fixed strip, 1 hair strip, 2 face mesh, 3 eye fan, 4 mouth fan
    mirror_tri: np.ndarray  # (T,) index of the mirror triangle (face mesh only, else -1)
    mirror_order: np.ndarray  # (T, 3) vertex of the mirror triangle matching each vertex
    upper_mouth: np.ndarray  # (T,) True for mouth-fan triangles on the upper inner lip


KIND_FIXED, KIND_HAIR, KIND_FACE, KIND_EYE, KIND_MOUTH = range(5)


@lru_cache(maxsize=4)
def _topology(mirror_key: bytes) -> _Topology:
    mirror = np.frombuffer(mirror_key, np.int64)
    tris, kinds = [], []
    for i in range(_N_OVAL):
        j = (i + 1) % _N_OVAL
        h0, h1, f0, f1 = _HAIR0 + i, _HAIR0 + j, _FIXED0 + i, _FIXED0 + j
        tris += [(h0, h1, f0), (h1, f1, f0)]
        kinds += [KIND_FIXED] * 2
    for i in range(_N_OVAL):
        j = (i + 1) % _N_OVAL
        o0, o1, h0, h1 = FACE_OVAL[i], FACE_OVAL[j], _HAIR0 + i, _HAIR0 + j
        tris += [(o0, o1, h0), (o1, h1, h0)]
        kinds += [KIND_HAIR] * 2
    from .mesh_warp import mesh_triangles  # (imports torch: only when a renderer is built)

    mesh = mesh_triangles()
    tris += [tuple(t) for t in mesh]
    kinds += [KIND_FACE] * len(mesh)
    for eye, iris in zip(EYE_CONTOURS, IRIS_CENTRES):
        for i in range(len(eye)):
            tris.append((iris, eye[i], eye[(i + 1) % len(eye)]))
            kinds.append(KIND_EYE)
    upper = []
    for i in range(len(INNER_LIPS)):
        a, b = INNER_LIPS[i], INNER_LIPS[(i + 1) % len(INNER_LIPS)]
        tris.append((_MOUTH_C, a, b))
        kinds.append(KIND_MOUTH)
        upper.append(a in INNER_LIP_UPPER and b in INNER_LIP_UPPER)
    tris_a = np.array(tris, np.int64)
    kind = np.array(kinds, np.int64)
    up = np.zeros(len(tris_a), bool)
    up[kind == KIND_MOUTH] = upper
    # Mirror triangles of the face mesh (same vertex set after mirroring the indices).
    lookup = {tuple(sorted(t)): k for k, t in enumerate(tris_a.tolist()) if kind[k] == KIND_FACE}
    mirror_tri = np.full(len(tris_a), -1, np.int64)
    order = np.tile(np.arange(3), (len(tris_a), 1))
    for k in np.nonzero(kind == KIND_FACE)[0]:
        m = tuple(int(mirror[v]) for v in tris_a[k])
        kk = lookup.get(tuple(sorted(m)))
        if kk is not None:
            mirror_tri[k] = kk
            order[k] = [list(tris_a[kk]).index(v) for v in m]
    return _Topology(tris_a, kind, mirror_tri, order, up)


def ring_points(landmarks: np.ndarray, factor: float) -> np.ndarray:
    """(36, 3) points on a ring around the face: the face oval pushed out from the head centre.

    Convention: landmarks (478, 3) frame pixels; ``factor`` in units of the oval's distance
    (1 = the oval itself); the depth offsets are kept, so the ring turns with the head.
    """
    lm = np.asarray(landmarks, np.float64)
    c, _ = head_frame(lm)
    out = lm[_OVAL].copy()
    out[:, :2] = c[:2] + (out[:, :2] - c[:2]) * factor
    return out


def signed_areas(tri: np.ndarray) -> np.ndarray:
    """(...,) signed areas (px^2) of (..., 3, 2) triangles; the sign is the vertex order's orientation."""
    e1, e2 = tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :]
    return (e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]) / 2.0


def _affines(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Per triangle, the 2x3 map taking ``dst`` triangle points to ``src`` ones.

    Convention: dst, src (T, 3, 2) pixels. returns (T, 2, 3) float64 (degenerate
    triangles get a zero map; the caller does not draw them).
    """
    e1, e2 = dst[:, 1] - dst[:, 0], dst[:, 2] - dst[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ok = np.abs(det) > 1e-9
    inv_det = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    # Barycentric (u, v) of a point p: [u, v] = Minv (p - d0), Minv = inverse of [e1 e2].
    minv = np.stack([np.stack([e2[:, 1], -e2[:, 0]], -1), np.stack([-e1[:, 1], e1[:, 0]], -1)], 1) * inv_det[:, None, None]
    s1, s2 = src[:, 1] - src[:, 0], src[:, 2] - src[:, 0]
    sm = np.stack([s1, s2], -1)  # (T, 2, 2): columns s1, s2
    lin = sm @ minv  # (T, 2, 2)
    off = src[:, 0] - np.einsum("tij,tj->ti", lin, dst[:, 0])
    return np.concatenate([lin, off[..., None]], -1)


class GeometryRenderer:
    """Warp one source frame onto target landmarks (see the module docstring).

    Args:
        frame: (H, W, 3) uint8 RGB source frame (not modified; kept by reference).
        landmarks: (478, 3) its landmarks in frame pixels.
        mirror: (478,) the motion model's landmark mirror map.
        config: :class:`GeometryConfig`.
    """

    def __init__(self, frame: np.ndarray, landmarks: np.ndarray, mirror: np.ndarray,
                 config: GeometryConfig = GeometryConfig()) -> None:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frame: expected (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
        lm = np.asarray(landmarks, np.float64)
        if lm.shape != (NUM_LANDMARKS, 3) or not np.isfinite(lm).all():
            raise ValueError(f"landmarks: expected finite ({NUM_LANDMARKS}, 3), got {lm.shape}")
        self.frame, self.config = frame, config
        self.topology = _topology(np.asarray(mirror, np.int64).tobytes())
        self.source_landmarks = lm
        self.hair = ring_points(lm, config.hair_ring)
        self.fixed = ring_points(lm, config.fixed_ring)[:, :2]
        self.source_vertices = self.vertices(lm, self.hair)
        self._source_tris = self.source_vertices[self.topology.triangles]  # (T, 3, 2)
        self._source_areas = signed_areas(self._source_tris)
        h, w = frame.shape[:2]
        x0, y0 = np.floor(self.fixed.min(0)).astype(int) - 1
        x1, y1 = np.ceil(self.fixed.max(0)).astype(int) + 2
        self.roi = (max(0, x0), max(0, y0), min(w, x1), min(h, y1))
        self.source_opening = _polygon_area(lm[list(INNER_LIPS), :2])
        lips = lm[list(OUTER_LIPS), :2]
        self.lip_colour = _mean_colour(frame, lips)
        self.skin_colour = _mean_colour(frame, lm[[50, 280, 101, 330, 151, 9], :2])

    def vertices(self, landmarks: np.ndarray, hair: np.ndarray) -> np.ndarray:
        """(NUM_VERTICES, 2) the renderer's vertices for these landmarks and hair-ring points."""
        v = np.empty((NUM_VERTICES, 2), np.float64)
        v[:NUM_LANDMARKS] = landmarks[:, :2]
        v[_HAIR0:_FIXED0] = hair[:, :2]
        v[_FIXED0:_MOUTH_C] = self.fixed
        v[_MOUTH_C] = landmarks[list(INNER_LIPS), :2].mean(0)
        return v

    def render(self, target_landmarks: np.ndarray, target_hair: np.ndarray) -> np.ndarray:
        """The source frame warped so its landmarks land on ``target_landmarks``.

        Convention:
            target_landmarks: (478, 3) frame pixels (z: depth, smaller = nearer);
            target_hair: (36, 3) the hair ring moved with the head (from the motion model,
                as extra rigid points, see :meth:`icface_video.motion.MotionModel.target_landmarks`).
            returns: (H, W, 3) uint8 RGB, a new array; pixels outside the fixed ring equal
            the source frame's.
        """
        out = self.frame.copy()
        x0, y0, x1, y1 = self.roi
        if x1 <= x0 or y1 <= y0:
            return out
        tl = np.asarray(target_landmarks, np.float64)
        tv = self.vertices(tl, np.asarray(target_hair, np.float64))
        face, _ = self.warp_region(tv, tl, target_hair)
        out[y0:y1, x0:x1] = face
        return out

    def warp_region(self, tv: np.ndarray, tl: np.ndarray, target_hair: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ROI of the output, and the triangle id buffer it was drawn from (-1: untouched;
        at the frame's resolution, or at the map's when the ROI is larger than ``max_side``)."""
        cfg, topo = self.config, self.topology
        x0, y0, x1, y1 = self.roi
        rw, rh = x1 - x0, y1 - y0
        step = max(1.0, max(rw, rh) / cfg.max_side)
        mw, mh = int(np.ceil(rw / step)), int(np.ceil(rh / step))
        tris = topo.triangles
        dst = tv[tris]  # (T, 3, 2) frame pixels
        src, _, area_t = self._fetch_triangles(dst)
        aff = _affines(dst, src)
        # Draw order: fixed strip, hair strip, then the face far to near.
        zt = np.zeros(NUM_VERTICES)
        zt[:NUM_LANDMARKS] = tl[:, 2]
        zt[_HAIR0:_FIXED0] = np.asarray(target_hair)[:, 2]
        zt[_MOUTH_C] = tl[list(INNER_LIPS), 2].mean()
        depth = zt[tris].mean(1)
        # Openings sit just behind their rims.
        scale = head_frame(tl)[1]
        depth = depth + np.where((topo.kind == KIND_EYE) | (topo.kind == KIND_MOUTH), 0.02 * scale, 0.0)
        rank = np.where(topo.kind >= KIND_FACE, 2, topo.kind)
        order = np.lexsort((-depth, rank))
        drawable = np.abs(area_t) >= 0.25
        ids = np.full((mh, mw), -1, np.int32)
        pts = np.round((dst - [x0, y0]) / step * 16.0).astype(np.int32)
        for k in order:
            if drawable[k]:
                cv2.fillConvexPoly(ids, pts[k], int(k), lineType=cv2.LINE_8, shift=4)
        # Per map pixel: the fetch position in the source frame (identity where untouched).
        gx, gy = self._grids(mw, mh, step)
        mx, my = gx.copy(), gy.copy()
        flat = ids.ravel()
        cov = np.flatnonzero(flat >= 0)
        a = aff.reshape(len(aff), 6).astype(np.float32)[flat[cov]]  # (P, 6)
        px, py = gx.ravel()[cov], gy.ravel()[cov]
        mx.ravel()[cov] = a[:, 0] * px + a[:, 1] * py + a[:, 2]
        my.ravel()[cov] = a[:, 3] * px + a[:, 4] * py + a[:, 5]
        edges = _discontinuities(mx, my, 2.0 * step)
        # The frame is warped in strips of rows, so memory stays bounded for any frame size
        # (one strip when the map has the frame's resolution).
        region = np.empty((rh, rw, 3), np.uint8)
        strip = rh if step == 1.0 else max(16, int(2_000_000 // max(rw, 1)))
        pad = int(np.ceil(4 * cfg.soften)) + 2 if cfg.soften > 0 else 0
        for r0 in range(0, rh, strip):
            r1 = min(rh, r0 + strip)
            q0, q1 = (r0, r1) if strip == rh else (max(0, r0 - pad), min(rh, r1 + pad))
            if step == 1.0:
                sx, sy, se = mx[q0:q1], my[q0:q1], edges[q0:q1]
            else:
                # The maps are piecewise affine: sample them at each frame pixel's map position.
                ux = np.broadcast_to(np.arange(rw, dtype=np.float32) / np.float32(step), (q1 - q0, rw))
                uy = np.broadcast_to((np.arange(q0, q1, dtype=np.float32) / np.float32(step))[:, None], (q1 - q0, rw))
                ux, uy = np.ascontiguousarray(ux), np.ascontiguousarray(uy)
                sx, sy, se = (cv2.remap(m, ux, uy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                              for m in (mx, my, edges))
            # (Pixels no triangle covers fetch themselves at integer positions: copied exactly.)
            part = cv2.remap(self.frame, sx, sy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            if pad and se.any():
                _soften(part, se, cfg.soften)
            region[r0:r1] = part[r0 - q0:r1 - q0]
        self._draw_mouth(region, ids, step, tv, tl)
        return region, ids

    def _grids(self, w: int, h: int, step: float) -> tuple[np.ndarray, np.ndarray]:
        """(h, w) float32 frame-pixel x and y of the map's pixels (spacing ``step`` from the
        ROI's corner), cached."""
        key = (w, h, step)
        cache = self.__dict__.setdefault("_grid_cache", {})
        if key not in cache:
            x0, y0 = self.roi[:2]
            gx = np.arange(w, dtype=np.float32) * np.float32(step) + np.float32(x0)
            gy = np.arange(h, dtype=np.float32) * np.float32(step) + np.float32(y0)
            cache[key] = (np.ascontiguousarray(np.broadcast_to(gx[None, :], (h, w))),
                          np.ascontiguousarray(np.broadcast_to(gy[:, None], (h, w))))
        return cache[key]

    def _fetch_triangles(self, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each target triangle fetches from: (T, 3, 2) source triangles, (T,) bool
        where the mirror triangle is used (hidden skin), (T,) target signed areas."""
        topo, cfg = self.topology, self.config
        tris = topo.triangles
        src = self._source_tris
        area_t, area_s = signed_areas(dst), self._source_areas
        face = topo.kind == KIND_FACE
        front = np.sign(np.median(area_t[face])) or 1.0
        at, as_ = area_t * front, area_s * front
        mt = np.maximum(topo.mirror_tri, 0)
        hidden = face & (at > 1.0) & (as_ < cfg.mirror_below * at) & (topo.mirror_tri >= 0)
        better = hidden & (as_[mt] > np.maximum(as_, 0.0) * 1.5)
        if better.any():
            mir_src = self.source_vertices[tris[mt]]  # the mirror triangle in the source
            mir_src = np.take_along_axis(mir_src, topo.mirror_order[:, :, None].repeat(2, 2), axis=1)
            src = np.where(better[:, None, None], mir_src, src)
        return src, better, area_t

    def mirrored_triangles(self, target_vertices: np.ndarray) -> np.ndarray:
        """Indices of the triangles fetched from their mirror for these target vertices."""
        return np.nonzero(self._fetch_triangles(target_vertices[self.topology.triangles])[1])[0]

    def _draw_mouth(self, region: np.ndarray, ids: np.ndarray, step: float, tv: np.ndarray, tl: np.ndarray) -> None:
        """Paint the mouth interior where the target opens wider than the source (in place).

        ``ids``: the triangle id map with pixel spacing ``step`` (frame pixels)."""
        cfg, topo = self.config, self.topology
        target_opening = _polygon_area(tl[list(INNER_LIPS), :2])
        if target_opening < 4.0:
            return
        q = self.source_opening / target_opening
        full, none = cfg.mouth_draw
        alpha = float(np.clip((none - q) / max(none - full, 1e-6), 0.0, 1.0))
        if alpha <= 0.0:
            return
        x0, y0 = self.roi[:2]
        rh, rw = region.shape[:2]
        lip = tl[list(INNER_LIPS), :2] - [x0, y0]
        bx0, by0 = np.clip(np.floor(lip.min(0)).astype(int) - 2, 0, [rw, rh])
        bx1, by1 = np.clip(np.ceil(lip.max(0)).astype(int) + 3, 0, [rw, rh])
        if bx1 <= bx0 or by1 <= by0:
            return
        bys, bxs = np.mgrid[by0:by1, bx0:bx1]
        mh, mw = ids.shape
        near = ids[np.clip(np.round(bys / step).astype(int), 0, mh - 1), np.clip(np.round(bxs / step).astype(int), 0, mw - 1)]
        inside = np.isin(near, np.nonzero(topo.kind == KIND_MOUTH)[0])
        if not inside.any():
            return
        ys, xs, k = bys[inside], bxs[inside], near[inside]
        tri = tv[topo.triangles[k]]  # (P, 3, 2): centre, a, b
        p = np.stack([xs + x0, ys + y0], -1).astype(np.float64)
        e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
        det = np.where(np.abs(det) < 1e-9, 1e-9, det)
        d = p - tri[:, 0]
        u = (d[:, 0] * e2[:, 1] - d[:, 1] * e2[:, 0]) / det
        v = (e1[:, 0] * d[:, 1] - e1[:, 1] * d[:, 0]) / det
        r = np.clip(u + v, 0.0, 1.0)  # 0 at the mouth centre, 1 on the lip
        corners = tl[[INNER_LIP_UPPER[0], INNER_LIP_UPPER[-1]], :2]
        width = float(np.linalg.norm(corners[1] - corners[0]))
        height = 2.0 * target_opening / max(width, 1.0)  # mean opening height
        # Where along the mouth each pixel lies (0 at one corner, 1 at the other).
        axis = (corners[1] - corners[0]) / max(width, 1e-6)
        along = np.clip(((p - corners[0]) @ axis) / max(width, 1e-6), 0.0, 1.0)
        # A dark cavity, lighter towards the lips; the tongue's tone rises from the lower lip.
        cavity = self.lip_colour * 0.18 + 4.0
        col = cavity[None] * (0.6 + 0.4 * r[:, None] ** 2)
        normal = np.array([-axis[1], axis[0]])  # points down the face
        below = ((p - tv[_MOUTH_C]) @ normal) / max(height / 2.0, 1.0)  # -1 upper lip .. 1 lower lip
        tongue = np.clip((below - 0.1) / 0.8, 0.0, 1.0) * 0.55
        col = col * (1 - tongue[:, None]) + (self.lip_colour * 0.55)[None] * tongue[:, None]
        # Upper teeth: a band below the upper lip, away from the corners.
        teeth_px = min(0.4 * height, 0.2 * width)  # upper incisors: about a fifth of the mouth width
        # Distance from the pixel down from the upper lip, in the mouth's own frame.
        lip = tl[list(INNER_LIP_UPPER), :2] - tv[_MOUTH_C]
        lu, lw = lip @ axis, lip @ normal
        order = np.argsort(lu)
        pc = p - tv[_MOUTH_C]
        d_up = pc @ normal - np.interp(pc @ axis, lu[order], lw[order])
        central = np.clip(1.0 - np.abs(along - 0.5) / 0.38, 0.0, 1.0) ** 0.5
        t = np.clip((teeth_px - d_up) / 1.5, 0.0, 1.0) * central
        lum = float(np.clip(self.skin_colour.mean() / 170.0, 0.55, 1.1))
        teeth = np.array([232.0, 224.0, 206.0]) * lum
        # Slightly darker at the biting edge, and faint gaps between the teeth (the
        # central incisors meet at the mouth's centre line; about 8 teeth across).
        period = max(width / 8.0, 2.0)
        phase = ((pc @ axis) / period + 0.5) % 1.0 - 0.5
        gaps = 1.0 - 0.12 * np.exp(-(phase / 0.06) ** 2) * (width > 24)
        teeth_col = teeth[None] * ((0.8 + 0.2 * np.clip(1.0 - d_up / max(teeth_px, 1.0), 0, 1)) * gaps)[:, None]
        col = col * (1 - t[:, None]) + teeth_col * t[:, None]
        # Fade into the lips over about a pixel (the fan's outer edge is the lip line).
        edge_px = 1.5 / max(height / 2.0, 1.0)
        alpha = alpha * np.clip((1.0 - r) / edge_px, 0.0, 1.0)[:, None] ** 0.5
        cur = region[ys, xs].astype(np.float64)
        region[ys, xs] = np.clip(cur * (1 - alpha) + col * alpha + 0.5, 0, 255).astype(np.uint8)


def _soften(part: np.ndarray, edges: np.ndarray, sigma: float) -> None:
    """Blur ``part`` (h, w, 3) uint8 in place over about a pixel around the occlusion edges (h, w) 0/1."""
    ys, xs = np.nonzero(edges)
    pad = int(np.ceil(4 * sigma)) + 2
    h, w = edges.shape
    a0, a1 = max(0, xs.min() - pad), min(w, xs.max() + pad + 1)
    b0, b1 = max(0, ys.min() - pad), min(h, ys.max() + pad + 1)
    m = cv2.GaussianBlur(edges[b0:b1, a0:a1], (0, 0), max(sigma, 0.5) * 1.5)
    m = np.clip(m * 2.0, 0.0, 1.0)[..., None]
    box = part[b0:b1, a0:a1]
    blurred = cv2.GaussianBlur(box, (0, 0), sigma)
    part[b0:b1, a0:a1] = (box * (1.0 - m) + blurred * m + 0.5).astype(np.uint8)


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def _mean_colour(frame: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(3,) float mean RGB of the frame at these pixel positions (3x3 neighbourhoods, clipped to the frame)."""
    h, w = frame.shape[:2]
    xs = np.clip(np.round(pts[:, 0]).astype(int)[:, None] + np.array([-1, 0, 1]), 0, w - 1)
    ys = np.clip(np.round(pts[:, 1]).astype(int)[:, None] + np.array([-1, 0, 1]), 0, h - 1)
    vals = frame[ys[:, :, None], xs[:, None, :]]
    return vals.reshape(-1, 3).astype(np.float64).mean(0)


def _discontinuities(mx: np.ndarray, my: np.ndarray, jump: float) -> np.ndarray:
    """(h, w) float32 1 where a neighbouring pixel's fetch is more than ``jump`` px away."""
    e = np.zeros(mx.shape, np.float32)
    dx = np.abs(np.diff(mx, axis=1)) + np.abs(np.diff(my, axis=1)) > jump
    dy = np.abs(np.diff(mx, axis=0)) + np.abs(np.diff(my, axis=0)) > jump
    e[:, 1:][dx] = 1.0
    e[:, :-1][dx] = 1.0
    e[1:][dy] = 1.0
    e[:-1][dy] = 1.0
    return e


class GeometryStage:
    """Frames from attributes with the motion model and the geometric renderer.

    Keeps the renderer of the last source frame, so a still source is set up once.

    Args:
        motion: the fitted :class:`~icface_video.motion.MotionModel`.
        config: :class:`GeometryConfig`.
        eyelids: the fitted eyelid geometry (:class:`~icface_video.eyelids.EyelidConfig`):
            the lids then follow AU45 along its openness curve (which closes an eye fully,
            where the motion model's least-squares lid motion is damped); None = the
            motion model's own AU45 displacements.
    """

    def __init__(self, motion: "MotionModel", config: GeometryConfig = GeometryConfig(),
                 eyelids: "EyelidConfig | None" = None) -> None:
        self.motion, self.config, self.eyelids = motion, config, eyelids
        self._key: tuple[int, int] | None = None
        self._renderer: GeometryRenderer | None = None

    def renderer(self, rgb: np.ndarray, landmarks: np.ndarray) -> GeometryRenderer:
        """The :class:`GeometryRenderer` of this source frame (cached for the same arrays)."""
        key = (id(rgb), id(landmarks))
        if self._renderer is None or self._key != key:
            self._renderer = GeometryRenderer(rgb, landmarks, self.motion.mirror, self.config)
            self._key = key
        return self._renderer

    def render(self, rgb: np.ndarray, landmarks: np.ndarray, source_attrs: np.ndarray, target_attrs: np.ndarray,
               placement: np.ndarray | None = None) -> np.ndarray:
        """One output frame.

        Convention:
            rgb: (H, W, 3) uint8 source frame; landmarks: (478, 3) its landmarks (frame pixels);
            source_attrs, target_attrs: (20,) AUs 0..5 then pitch/yaw/roll radians;
            placement: optional (3,) head shift (dx, dy) px and scale factor (absolute driving).
            returns: (H, W, 3) uint8 RGB.
        """
        r = self.renderer(rgb, landmarks)
        pts = np.concatenate([r.source_landmarks, r.hair])
        target = np.array(target_attrs, np.float64).reshape(1, -1)
        if self.eyelids is not None:
            target[0, _AU45] = source_attrs[_AU45]  # the lids move by the eyelid geometry below
        moved = self.motion.target_landmarks(pts, source_attrs, target,
                                             None if placement is None else np.asarray(placement)[None])[0]
        if self.eyelids is not None and target_attrs[_AU45] != source_attrs[_AU45]:
            import torch

            from .eyelids import move_lids

            from .attributes import to_scale
            from .model import EYELID_AU_SCALE

            lm2 = torch.from_numpy(moved[None, :NUM_LANDMARKS, :2].copy())
            # The eyelid curve was fitted on its own AU scale.
            both = to_scale(np.stack([source_attrs, target_attrs]).astype(np.float32), EYELID_AU_SCALE)
            a_s = torch.tensor([float(both[0, _AU45])], dtype=lm2.dtype)
            a_t = torch.tensor([float(both[1, _AU45])], dtype=lm2.dtype)
            moved[:NUM_LANDMARKS, :2] = move_lids(self.eyelids, lm2, a_s, a_t)[0].numpy()
        return r.render(moved[:NUM_LANDMARKS], moved[NUM_LANDMARKS:])
