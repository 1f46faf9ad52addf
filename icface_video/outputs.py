"""Safe output files: written under a temporary name, renamed into place when complete.

An interrupted or failed run never leaves a file under the final name, and an existing
output is never touched unless ``overwrite`` is set (and then only replaced at the end).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Iterable, Iterator

from .errors import IcfaceError, OutputError
from .runtime import raise_if_terminated, spawning

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
    parent = p.parent
    if not parent.is_dir():
        problem = f"{parent} is a file, not a folder" if parent.exists() else f"folder {parent} does not exist"
        raise OutputError(p, problem)
    if not os.access(parent, os.W_OK):
        raise OutputError(p, f"folder {parent} is not writable")
    if is_sequence(p) and not overwrite:
        existing = sequence_files(p)
        if existing:
            raise OutputError(p, f"{existing[0]} already exists (use --overwrite to replace the sequence)")
    return p


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    The temporary file keeps the final suffix (so encoders pick the right format) and
    is removed on any exception, including KeyboardInterrupt.
    """
    final = check_output(path, overwrite)
    if is_sequence(final):
        with _atomic_sequence(final, overwrite) as tmp:
            yield tmp
        return
    tmp = _new_temp(final.parent, f".{final.stem}.", f".part{final.suffix}", folder=False, final=final)
    try:
        yield tmp
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise OutputError(final, "nothing was written")
        raise_if_terminated()  # a SIGTERM swallowed on the way must not publish the file
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
        return fix(getattr(exc, "path")), fix(getattr(exc, "problem"))  # noqa: B009 - any exception type
    return (fix(str(exc)),)


def _new_temp(parent: Path, prefix: str, suffix: str, folder: bool, final: Path) -> Path:
    """Create a new temporary file (mode 0666 less the umask, as the final file will have)
    or folder (0700) ``parent/<prefix><random><suffix>`` and register it in
    ``_LIVE_TEMPS``.

    Inside :func:`~icface_video.runtime.spawning`, and registered before it exists, so a
    process that halts (:func:`remove_live_temps`) never leaves one behind.

    Raises:
        OutputError: naming ``final``, when the folder cannot be written.
    """
    with spawning():
        while True:
            tmp = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
            _LIVE_TEMPS.add(tmp)
            try:
                if folder:
                    os.mkdir(tmp, 0o700)
                else:
                    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                return tmp
            except FileExistsError:
                _LIVE_TEMPS.discard(tmp)
            except OSError as exc:  # read-only file system, quota, ...: name the output, not the temporary file
                _LIVE_TEMPS.discard(tmp)
                raise OutputError(final, f"cannot be written ({exc.strerror or exc})") from None


def remove_live_temps() -> None:
    """Delete the temporary files and folders this process is writing (it is about to stop
    without unwinding: a cleanup of :func:`~icface_video.runtime.halt`)."""
    for tmp in list(_LIVE_TEMPS):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                tmp.unlink()


# -- image sequences ----------------------------------------------------------------------

_FRAME_NUMBER = re.compile(r"%(0\d+)?d")


def is_sequence(path: str | os.PathLike) -> bool:
    """True for an image-sequence pattern: a file name with one printf frame number
    (``%d``, ``%05d``), as in ``frames/%05d.png``."""
    name = Path(path).name
    return len(_FRAME_NUMBER.findall(name)) == 1 and name.count("%") == 1


def sequence_stem(pattern: str | os.PathLike) -> str:
    """A sequence's name without its frame number (``frames/shot_%05d.png`` -> ``shot``),
    else its folder's name (``frames/%05d.png`` -> ``frames``), for files named after it."""
    p = Path(pattern)
    stem = _FRAME_NUMBER.sub("", p.stem).strip("._- ")
    return stem or (p.parent.resolve().name or "frames")


def sequence_files(pattern: str | os.PathLike) -> list[Path]:
    """The existing files a sequence pattern names (sorted), e.g. frames/00001.png ..."""
    p = Path(pattern)
    folder = p.parent
    m = _FRAME_NUMBER.search(p.name)
    if m is None:
        raise ValueError(f"pattern: {pattern} has no frame number (%d or %0Nd)")
    head, tail = p.name[:m.start()], p.name[m.end():]
    regex = re.compile(re.escape(head) + r"\d+" + re.escape(tail) + r"\Z")
    if not folder.is_dir():
        return []
    return sorted(folder / n for n in os.listdir(folder) if regex.match(n))


@contextlib.contextmanager
def _atomic_sequence(final: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a pattern inside a hidden temporary folder beside ``final``; on success move
    every frame into place (an ``--overwrite`` run first removes the old sequence's
    frames), on any exception remove the folder."""
    parent = final.parent
    tmp_dir = _new_temp(parent, f".{sequence_stem(final)}.", ".part", folder=True, final=final)
    try:
        yield tmp_dir / final.name
        written = sorted(tmp_dir.iterdir())
        if not written:
            raise OutputError(final, "nothing was written")
        if overwrite:
            new = {f.name for f in written}
            for old in sequence_files(final):
                if old.name not in new:
                    old.unlink()
        raise_if_terminated()
        for f in written:
            os.replace(f, parent / f.name)
        tmp_dir.rmdir()
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        _LIVE_TEMPS.discard(tmp_dir)
