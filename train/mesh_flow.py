"""A dense backward-flow target from the face mesh of a source and a target frame.

The 478 MediaPipe landmarks of two frames of one face are corresponding points; the
mesh's 852 triangles (MediaPipe's face tessellation, which leaves the eye and mouth
openings as holes) make them a piecewise-affine map. For each target pixel inside a mesh
triangle, the map gives the source point that shows the same skin: barycentric
coordinates in the target triangle, applied to the same triangle in the source.

Why it exists: the sparse landmark loss only constrains the flow at 478 points. Where a
closing eye's upper lid meets the lower lid, the two lids' landmarks coincide in the
target and the loss cannot say which one to fetch, so the flow stays smooth and the eye
stays open. The mesh target does say it, over whole regions: every target pixel above
the meeting line lies in an upper-lid triangle and fetches the source's upper lid; every
pixel below it fetches the lower lid. The fetch offset jumps across the line by the
source eye's opening, which is what a warp must do to close an eye. Pixels in the
target's openings (an open eye or mouth where the source's was closed) and outside the
face are not covered: what they show does not exist in the source.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

_MIN_AREA = 0.25  # px^2: thinner target triangles (a closed eye's slivers) cover nothing


@lru_cache(maxsize=1)
def mesh_triangles() -> np.ndarray:
    """(852, 3) int64 vertex indices of MediaPipe's face tessellation (landmarks 0..467)."""
    from mediapipe.tasks.python.vision import FaceLandmarksConnections

    edges = FaceLandmarksConnections.FACE_LANDMARKS_TESSELATION
    return np.array([[edges[k].start, edges[k + 1].start, edges[k + 2].start]
                     for k in range(0, len(edges), 3)], dtype=np.int64)


def mesh_flow_target(src_lm: torch.Tensor, tgt_lm: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward sampling grid that maps each target pixel to the same skin in the source.

    Convention:
        src_lm, tgt_lm: (B, 478, 2) landmarks in crop pixels (x right, y down, origin at the
            top-left pixel corner) of a ``size`` x ``size`` crop; the same index is the same
            point of the face in both.
        returns ``(grid, covered)``: grid (B, size, size, 2) in the ``grid_sample``
            convention (x then y, -1..1 across the outer pixel corners,
            ``align_corners=False``), 0 where not covered; covered (B, 1, size, size)
            float 0/1, 1 where the pixel centre lies in a target triangle of at least
            0.25 px^2 (a triangle wider than size / 4 covers only its top-left
            size / 4 square). Where triangles overlap (a turned head folds the mesh at the
            silhouette) the highest triangle index wins, so the result is deterministic.
    """
    if src_lm.shape != tgt_lm.shape or src_lm.ndim != 3 or src_lm.shape[-1] != 2:
        raise ValueError(f"src_lm, tgt_lm: expected equal (B, 478, 2) shapes, got "
                         f"{tuple(src_lm.shape)} and {tuple(tgt_lm.shape)}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size: expected an integer >= 8, got {size!r}")
    with torch.no_grad():
        tris = torch.from_numpy(mesh_triangles()).to(src_lm.device)
        src, tgt = src_lm.double(), tgt_lm.double()
        b = src.shape[0]
        a, p, q = (tgt[:, tris[:, k]] for k in range(3))  # (B, T, 2) target vertices
        e1, e2 = p - a, q - a
        det = e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]  # twice the signed area
        lo = torch.minimum(torch.minimum(a, p), q)
        hi = torch.maximum(torch.maximum(a, p), q)
        # Candidate pixels: a K x K block from the first pixel centre right/below lo; K fits
        # the largest triangle but is capped at size / 4 (a bigger one is only partly covered).
        k = int(min(size // 4, max(2, float((hi - lo).max()) + 2)))
        start = torch.floor(lo - 0.5)  # (B, T, 2) pixel index whose centre is <= lo
        off = torch.arange(k, device=src.device, dtype=src.dtype)
        cx = start[..., 0, None, None] + off[None, :]            # (B, T, 1, K) columns
        cy = start[..., 1, None, None] + off[:, None]            # (B, T, K, 1) rows
        dx = cx + 0.5 - a[..., 0, None, None]
        dy = cy + 0.5 - a[..., 1, None, None]
        inv = 1.0 / torch.where(det.abs() >= 2 * _MIN_AREA, det, torch.full_like(det, float("inf")))
        inv = inv[..., None, None]
        u = (dx * e2[..., 1, None, None] - dy * e2[..., 0, None, None]) * inv  # (B, T, K, K)
        v = (e1[..., 0, None, None] * dy - e1[..., 1, None, None] * dx) * inv
        eps = 1e-9
        inside = ((u >= -eps) & (v >= -eps) & (u + v <= 1 + eps) & (inv != 0)
                  & (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size))
        bi, ti, ri, ci = inside.nonzero(as_tuple=True)
        pix = (bi * size + cy[bi, ti, ri, 0].long()) * size + cx[bi, ti, 0, ci].long()
        winner = torch.full((b * size * size,), -1, dtype=torch.long, device=src.device)
        winner.scatter_reduce_(0, pix, ti, reduce="amax")
        keep = winner[pix] == ti
        bi, ti, pix = bi[keep], ti[keep], pix[keep]
        uu, vv = u[inside][keep, None], v[inside][keep, None]
        sa, sp, sq = (src[bi, tris[ti, j]] for j in range(3))
        fetched = sa + uu * (sp - sa) + vv * (sq - sa)  # source pixels
        grid = torch.zeros(b * size * size, 2, dtype=src_lm.dtype, device=src.device)
        grid[pix] = (fetched * (2.0 / size) - 1.0).to(src_lm.dtype)
        covered = torch.zeros(b * size * size, dtype=src_lm.dtype, device=src.device)
        covered[pix] = 1.0
    return grid.view(b, size, size, 2), covered.view(b, 1, size, size)


def mesh_flow_loss(grid: torch.Tensor, target: torch.Tensor, covered: torch.Tensor,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean L1 between a predicted backward grid and the mesh target, per coordinate.

    Convention:
        grid, target: (B, H, W, 2) grid_sample convention (-1..1; 1.0 = half the crop side).
        covered: (B, 1, H, W) 0/1 from :func:`mesh_flow_target`.
        weight: optional (B, 1, H, W) per-pixel weight (e.g. heavier over the eyes).
        returns: scalar in normalised units.
    """
    w = covered if weight is None else covered * weight
    err = (grid - target).abs().sum(dim=-1).unsqueeze(1)  # (B, 1, H, W)
    return (err * w).sum() / (2 * w.sum().clamp_min(1.0))
