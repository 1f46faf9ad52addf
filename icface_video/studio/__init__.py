"""``icface-video studio``: a local page with the 17 AU and 3 head-angle sliders, a live
preview, driving from a clip, and exports (preset, keyframes, video, command line).

The server (:mod:`.server`) needs the optional ``studio`` extra (Starlette, uvicorn);
:func:`require_extra` says so in one line when it is missing. :mod:`.session` holds the
state and the rendering, and imports no web package.
"""

from __future__ import annotations

import importlib.util

from ..errors import IcfaceError

#: Import names of the extra's packages (``pip install icface-video[studio]``).
EXTRA_MODULES = ("starlette", "uvicorn")


class MissingExtra(IcfaceError):
    """The ``studio`` extra is not installed (exit code 1)."""


def require_extra() -> None:
    """Raise :class:`MissingExtra` naming the missing packages and the install command."""
    missing = [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(f"studio: needs the studio extra ({', '.join(missing)} not installed): "
                           "pip install 'icface-video[studio]'")
