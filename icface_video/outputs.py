"""Safe output files: written under a temporary name, renamed into place when complete.

An interrupted or failed run never leaves a file under the final name, and an existing
output is never touched unless ``overwrite`` is set (and then only replaced at the end).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import IcfaceError, OutputError

# Temporary files being written by this process (removed by :func:`remove_live_temps`
# when the process is told to stop: a batch worker whose parent died).
_LIVE_TEMPS: set[Path] = set()

_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """A short name of a non-regular file type from ``st_mode`` ("a FIFO (named pipe)", ...)."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when both paths name the same existing file (links and ``..`` resolved)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def check_output(path: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Check that ``path`` may be written; returns it as a Path.

    Only a regular file is ever replaced (with ``overwrite``): a device, FIFO or socket
    given as the output is refused, and so is an output that is one of ``inputs``.

    Raises:
        OutputError: exists without ``overwrite``, is a directory or a special file, is
            one of the inputs, or its folder is missing or not writable.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(p, "is a directory")
    try:
        mode = os.stat(p).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputError(p, f"is {file_kind(mode)}; only a regular file can be written or replaced")
    for src in inputs:
        if src is not None and same_file(src, p):
            raise OutputError(p, f"is also an input ({src}); choose another output name")
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
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".part{final.suffix}", dir=final.parent or ".")
    except OSError as exc:  # read-only file system, quota, ...: name the output, not the temporary file
        raise OutputError(final, f"cannot be written ({exc.strerror or exc})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    _LIVE_TEMPS.add(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the final file normal permissions
    try:
        yield tmp
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise OutputError(final, "nothing was written")
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.filename is not None and Path(exc.filename) == tmp:
            raise OutputError(final, f"cannot be written ({exc.strerror or exc})") from None
        if isinstance(exc, IcfaceError) and tmp.name in str(exc):  # e.g. ffmpeg's message about the file
            raise type(exc)(*_renamed_args(exc, tmp, final)) from None
        raise
    finally:
        _LIVE_TEMPS.discard(tmp)


def _renamed_args(exc: IcfaceError, tmp: Path, final: Path) -> tuple:
    """The arguments of ``exc`` with the temporary file's name replaced by the output's."""
    def fix(text: str) -> str:
        return text.replace(str(tmp), str(final)).replace(tmp.name, final.name)

    if isinstance(exc, OutputError) or hasattr(exc, "problem"):
        return fix(getattr(exc, "path")), fix(getattr(exc, "problem"))
    return (fix(str(exc)),)


def remove_live_temps() -> None:
    """Delete the temporary files this process is writing (it is about to stop without unwinding)."""
    for tmp in list(_LIVE_TEMPS):
        with contextlib.suppress(OSError):
            tmp.unlink()
