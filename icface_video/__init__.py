"""icface-video: interpretable, controllable face reenactment in video (ICface, WACV 2020).

Data flow, one module per stage::

    media (decode) -> face (landmarks, blendshapes, pose) -> attributes (20 values)
    -> track (per-clip analysis) -> smoothing -> align (crops) -> csvio / cli

The Python API (:mod:`icface_video.api`; README "Python API")::

    icface_video.reenact(source, driving, output, **options)   # one job, the CLI's options
    icface_video.load_model(model=None, device="auto")          # load once, pass as model=
    icface_video.Reenactor(rgb, model=...)                       # frames in memory: numpy in, numpy out

Nothing heavy (torch, MediaPipe) is imported until one of them is used.
"""

__version__ = "0.1.0"
__all__ = ["reenact", "load_model", "Reenactor", "__version__"]


def __getattr__(name: str):
    if name == "reenact":
        # The submodule icface_video.reenact is callable as the API's reenact() (see there).
        import importlib

        return importlib.import_module(".reenact", __name__)
    if name in ("load_model", "Reenactor"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
