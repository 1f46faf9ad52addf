"""Index sets of MediaPipe's 478-landmark face mesh: the one home of every landmark index
used by the geometric stages, the eyelid warp, paste-back and training.

Landmarks 0..467 are the face mesh, 468..472 and 473..477 the two irises (centre first).
Every tuple here is ordered as stated, so it can be used as a polygon or a strip.
"""

from __future__ import annotations

from dataclasses import dataclass

NUM_LANDMARKS = 478
NUM_MESH = 468  # the tessellated part (no irises)

# The silhouette, in order around the face (FACEMESH_FACE_OVAL), starting at the forehead top.
FACE_OVAL: tuple[int, ...] = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)

# The outer lip line, in order around the mouth (FACEMESH_LIPS' outer contour).
OUTER_LIPS: tuple[int, ...] = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)

# The mouth opening, in order: the upper inner lip from the image-left corner (78) to the
# image-right corner (308), then the lower inner lip back.
INNER_LIP_UPPER: tuple[int, ...] = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LIP_LOWER: tuple[int, ...] = (324, 318, 402, 317, 14, 87, 178, 88, 95)
INNER_LIPS: tuple[int, ...] = INNER_LIP_UPPER + INNER_LIP_LOWER

@dataclass(frozen=True)
class EyeTopology:
    """One eye's landmark indices in the MediaPipe mesh.

    Attributes:
        corners: (outer, inner) corner landmarks: the eye frame's x axis runs outer -> inner.
        upper, lower: 7 upper-lid and 7 lower-lid contour landmarks, paired across the eye
            (``upper[i]`` faces ``lower[i]``), outer to inner.
        ring: the ring of landmarks just above the upper lid (it moves a little in a blink).
    """

    corners: tuple[int, int]
    upper: tuple[int, ...]
    lower: tuple[int, ...]
    ring: tuple[int, ...]

    @property
    def moved(self) -> tuple[int, ...]:
        return self.upper + self.lower + self.ring


# The subject's right eye (image left in a frontal view) and left eye.
EYES: tuple[EyeTopology, EyeTopology] = (
    EyeTopology((33, 133), (246, 161, 160, 159, 158, 157, 173), (7, 163, 144, 145, 153, 154, 155),
                (247, 30, 29, 27, 28, 56, 190)),
    EyeTopology((263, 362), (466, 388, 387, 386, 385, 384, 398), (249, 390, 373, 374, 380, 381, 382),
                (467, 260, 259, 257, 258, 286, 414)),
)


# Each eye opening, in order: outer corner, upper lid outer -> inner, inner corner, lower
# lid inner -> outer. First the eye on the image's left in a frontal view, then the other.
# (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7) and
# (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249).
EYE_CONTOURS: tuple[tuple[int, ...], tuple[int, ...]] = tuple(  # type: ignore[assignment]
    (e.corners[0],) + e.upper + (e.corners[1],) + e.lower[::-1] for e in EYES)

# The eyebrows' lower edges, 5 points each, outer to inner: the brow over the image-left
# eye in a frontal view, then the other.
BROWS: tuple[int, ...] = (70, 63, 105, 66, 107, 336, 296, 334, 293, 300)
# The iris centres (468: iris of the image-left eye in a frontal view; 473: the other).
IRIS_CENTRES: tuple[int, int] = (468, 473)
NOSE_TIP = 1  # the tip of the nose
MOUTH_CORNERS: tuple[int, int] = (61, 291)  # OUTER_LIPS' two ends

# Points that move little with expression (nose bridge, eye corners, forehead, temples,
# the sides of the face at ear level): the head's centre and scale are measured on them.
RIGID: tuple[int, ...] = (
    168, 6, 197, 195, 5, 4, 1, 33, 133, 362, 263, 10, 151, 9, 8, 109, 338, 67, 297, 103, 332,
    54, 284, 21, 251, 162, 389, 127, 356, 234, 454, 93, 323,
)
