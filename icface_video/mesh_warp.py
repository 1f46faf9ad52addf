"""Sampling grids and warps (``grid_sample`` convention): the identity grid, the backward
warp, and piecewise-affine warps over MediaPipe's face mesh.

Grids are (B, H, W, 2): x then y, -1..1 spanning the outer pixel corners
(``align_corners=False``). The generator (:mod:`icface_video.networks`), the eyelid warp
and training use them; this module needs no network.

The 478 MediaPipe landmarks of two views of one face are corresponding points; the
mesh's 852 triangles (MediaPipe's face tessellation over landmarks 0..467, which leaves
the eye and mouth openings as holes) make them a piecewise-affine map. For each pixel of
the second view inside a triangle, :func:`piecewise_affine_grid` gives the point of the
first view that shows the same skin: barycentric coordinates in the second view's
triangle, applied to the same triangle in the first.

Used by ``icface_video.eyelids`` (closing a source's eyes by moving its lid landmarks) and
by training (``train.mesh_flow``: a dense flow target between two frames).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

_MIN_AREA = 0.25  # px^2: thinner target triangles (a closed eye's slivers) cover nothing


def identity_grid(batch: int, height: int, width: int, device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, H, W, 2) sampling grid of the identity warp, ``grid_sample`` convention
    (x then y, -1..1 spanning the outer pixel corners, ``align_corners=False``)."""
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) * 2 / height - 1
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) * 2 / width - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).unsqueeze(0).expand(batch, -1, -1, -1)


def warp(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Backward warp: output[y, x] = image[grid[y, x]] (bilinear, border padding)."""
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


@lru_cache(maxsize=1)
def mesh_triangles() -> np.ndarray:
    """(852, 3) int64 vertex indices of MediaPipe's face tessellation (landmarks 0..467)."""
    from mediapipe.tasks.python.vision import FaceLandmarksConnections

    edges = FaceLandmarksConnections.FACE_LANDMARKS_TESSELATION
    return np.array([[edges[k].start, edges[k + 1].start, edges[k + 2].start]
                     for k in range(0, len(edges), 3)], dtype=np.int64)


def piecewise_affine_grid(src_lm: torch.Tensor, tgt_lm: torch.Tensor, size: int,
                          triangles: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward sampling grid that maps each target pixel to the same skin in the source.

    Convention:
        triangles: (T, 3) vertex indices into the landmarks; None = the whole face mesh
            (:func:`mesh_triangles`). A subset (the triangles near the eyes) is cheaper.
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
        tris = torch.from_numpy(mesh_triangles() if triangles is None else np.asarray(triangles, np.int64))
        tris = tris.to(src_lm.device)
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
