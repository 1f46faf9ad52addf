"""icface-video: interpretable, controllable face reenactment in video (ICface, WACV 2020).

Data flow, one module per stage::

    media (decode) -> face (landmarks, blendshapes, pose) -> attributes (20 values)
    -> track (per-clip analysis) -> smoothing -> align (crops) -> csvio / cli
"""

__version__ = "0.1.0"
