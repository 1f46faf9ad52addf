"""Process-wide run-time settings: how the C allocator treats large blocks, whether
the run was told to stop (SIGTERM), and how a process stops at once (:func:`halt`).

The render loop allocates and frees tensors of several MB per batch of frames (the
generator's activations, the paste-back fields of a 400x400 face region, the frames
themselves). glibc's malloc serves blocks above its mmap threshold (adaptive, 128 KiB
to 32 MiB) with a fresh ``mmap`` and returns them with ``munmap`` on free, so every
batch pays a page fault per 4 KiB page on first touch, in kernel time on the same two
cores. Raising the threshold (and the trim threshold, so freed heap memory is kept)
lets freed blocks be reused. Measured on the 2-core machine (README.md, "Speed and
memory"): a 10 s reenact (302 frames, 512x512) went from 8.2-9.1 s to 7.0-7.2 s end to
end, its kernel time from 2.3-2.6 s to 0.7-0.8 s, paste-back from 4.5-5.7 to 2.6 ms a
frame; a training step (fast.toml, 2 threads) from 0.375 to 0.335 s.

Linux/glibc only; elsewhere (macOS, musl) :func:`tune_allocator` does nothing. Set
``ICFACE_MALLOC=default`` to keep the allocator's own settings.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NoReturn

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, <malloc.h>
_M_MMAP_THRESHOLD = -3


@dataclass(frozen=True)
class AllocatorConfig:
    """Thresholds of glibc's malloc.

    Attributes:
        mmap_threshold_mib: blocks at least this large get their own mmap (MiB).
        trim_threshold_mib: free memory at the heap's top beyond this is returned to the
            OS (MiB).
    """

    mmap_threshold_mib: int = 256
    trim_threshold_mib: int = 512

    def __post_init__(self) -> None:
        for name in ("mmap_threshold_mib", "trim_threshold_mib"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 1024:
                raise ValueError(f"{name}: expected an integer in 1..1024, got {value!r}")


_applied: AllocatorConfig | None = None


def tune_allocator(config: AllocatorConfig = AllocatorConfig()) -> bool:
    """Apply ``config`` to this process's glibc malloc; True when applied.

    Call it early (before torch allocates); later allocations follow it. Idempotent.
    Returns False, changing nothing, off Linux, without glibc, or when the environment
    sets ``ICFACE_MALLOC=default``.
    """
    global _applied
    if _applied == config:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("ICFACE_MALLOC", "") == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl's mallopt is a no-op)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = (mallopt(_M_MMAP_THRESHOLD, config.mmap_threshold_mib << 20) == 1
          and mallopt(_M_TRIM_THRESHOLD, config.trim_threshold_mib << 20) == 1)
    if ok:
        _applied = config
    return ok


# -- termination ----------------------------------------------------------------------


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so that the run unwinds as for Ctrl-C: temporary
    files are deleted, ffmpeg and batch workers are stopped."""


_termination = threading.Event()


def on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM handler: remember the request and raise :class:`Terminated` where the main
    thread is.

    The raise can land where Python swallows exceptions (a finaliser, a callback from C),
    so the request is also kept: :func:`raise_if_terminated` raises it again at the next
    check (each rendered batch, and before a finished output takes its final name).
    """
    _termination.set()
    raise Terminated()


def reset_termination() -> None:
    """Forget an earlier SIGTERM (a new CLI run in the same process starts clean)."""
    _termination.clear()


def termination_requested() -> bool:
    """True once SIGTERM arrived in this run."""
    return _termination.is_set()


def raise_if_terminated() -> None:
    """Raise :class:`Terminated` if SIGTERM arrived (called at safe points of long work)."""
    if _termination.is_set():
        raise Terminated()


# -- stopping at once (a batch worker whose parent is gone) ------------------------------

_spawn_lock = threading.Lock()


@contextlib.contextmanager
def spawning() -> Iterator[None]:
    """Hold while creating *and registering* something :func:`halt` must undo (a temporary
    output file, an ffmpeg process).

    :func:`halt` waits for the block to end, so nothing is created but left unregistered;
    once the process is halting, entering the block waits until the process has ended.
    Never call :func:`halt` from inside the block, so never from a signal handler (which
    can run there): a handler only asks another thread to halt (``batch._request_stop``).
    """
    with _spawn_lock:
        yield


def halt(exit_code: int, cleanups: Iterable[Callable[[], None]]) -> NoReturn:
    """End this process at once with ``exit_code``, after ``cleanups`` (each one's errors
    are ignored), without unwinding the main thread.

    No new temporary file or encoder can appear while or after the cleanups run (see
    :func:`spawning`). Call it from a thread other than the main one, or from the main
    thread outside any :func:`spawning` block.
    """
    _spawn_lock.acquire()  # kept: the process ends holding it
    for cleanup in cleanups:
        try:
            cleanup()
        except Exception:  # noqa: BLE001 - the process ends anyway; do the other cleanups
            pass
    os._exit(exit_code)
