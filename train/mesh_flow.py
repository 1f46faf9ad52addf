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

import torch

from icface_video.mesh_warp import mesh_triangles, piecewise_affine_grid

__all__ = ["mesh_triangles", "mesh_flow_target", "mesh_flow_loss"]


def mesh_flow_target(src_lm: torch.Tensor, tgt_lm: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward grid mapping each target pixel to the same skin in the source, over the
    whole face mesh: :func:`icface_video.mesh_warp.piecewise_affine_grid` (shapes, units and
    coverage rules there)."""
    return piecewise_affine_grid(src_lm, tgt_lm, size)


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
