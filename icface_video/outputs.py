"""Safe output files: written under a temporary name, renamed into place when complete.

An interrupted or failed run never leaves a file under the final name, and an existing
output is never touched unless ``overwrite`` is set (and then only replaced at the end).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
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
    folder = p.parent if str(p.parent) else Path(".")
    m = _FRAME_NUMBER.search(p.name)
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
    parent = final.parent if str(final.parent) else Path(".")
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{sequence_stem(final)}.", suffix=".part", dir=parent))
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
        for f in written:
            os.replace(f, parent / f.name)
        tmp_dir.rmdir()
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
