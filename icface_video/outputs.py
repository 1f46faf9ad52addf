"""Safe output files: written under a temporary name, renamed into place when complete.

An interrupted or failed run never leaves a file under the final name, and an existing
output is never touched unless ``overwrite`` is set (and then only replaced at the end).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputError


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Check that ``path`` may be written; returns it as a Path.

    Raises:
        OutputError: exists without ``overwrite``, is a directory, or its folder is
            missing or not writable.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(p, "is a directory")
    if p.exists() and not overwrite:
        raise OutputError(p, "already exists (use --overwrite to replace it)")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        problem = f"{parent} is a file, not a folder" if parent.exists() else f"folder {parent} does not exist"
        raise OutputError(p, problem)
    if not os.access(parent, os.W_OK):
        raise OutputError(p, f"folder {parent} is not writable")
    return p


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    The temporary file keeps the final suffix (so encoders pick the right format) and
    is removed on any exception, including KeyboardInterrupt.
    """
    final = check_output(path, overwrite)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".part{final.suffix}", dir=final.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the final file normal permissions
    try:
        yield tmp
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise OutputError(final, "nothing was written")
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
