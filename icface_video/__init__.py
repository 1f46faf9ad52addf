"""icface-video: interpretable, controllable face reenactment in video (ICface, WACV 2020).

Data flow, one module per stage (README "Layout" has the table)::

    decode          media: frames of a video or image, real timestamps, exact frame rates
    face analysis   face: MediaPipe landmarks (478, 3D), blendshapes, head pose; YuNet fallback
    attributes      attributes: 20 values (17 AUs 0..5, pitch/yaw/roll in radians)
                    -> track (per clip) -> smoothing -> csvio (``extract``'s CSV, read back too)
    motion          driving (modes, part drivers, relative/absolute), controls / presets /
                    keyframes (``--set``, presets, ``animate``'s keys) -> jobs (the planner:
                    attributes per output frame); geometry renderer: motion (attributes ->
                    target 3D landmarks)
    render          reenact (the streaming loop): geo_render (warp of the full frame over the
                    mesh, the default) or align (crops) -> model / networks (the generator);
                    eyelids (lids moved to AU45) in both
    paste-back      paste (network renderer: the generated crop back into the frame, feathered
                    face-oval mask; the geometric renderer draws the full frame itself)
    encode          encode (ffmpeg: H.264, ProRes, PNG sequences; BT.709; audio) -> outputs
                    (temporary name, renamed when complete)

Front ends: cli (the commands), batch (job files), api (Python, below).

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
