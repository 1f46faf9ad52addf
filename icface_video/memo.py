"""A memo of analysed inputs, shared by the jobs of one run and safe across threads.

``batch`` analyses each source and driver once per worker; ``reenact`` starts analysing
its drivers in a second thread while the model loads (:func:`prefetch_tracks`), and the
render then finds the finished (or still running) analysis here. This module imports no
torch, so that analysis can start before torch is imported.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from .driving import AttributeTrack, load_track
from .smoothing import SmoothConfig

T = TypeVar("T")


class AnalysisCache:
    """Memo of analysed sources and drivers, so a file is analysed once.

    Keys include the file's size and mtime, so a changed file is analysed again. A key
    being computed in one thread is waited for, not computed twice, by another.
    """

    def __init__(self) -> None:
        self._items: dict[tuple, Future[Any]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(kind: str, path: str, *extra: object) -> tuple:
        st = Path(path).stat()
        return (kind, str(Path(path).resolve()), st.st_size, st.st_mtime_ns, *extra)

    def get(self, kind: str, path: str, make: Callable[[], T], *extra: object) -> T:
        """The memo of (kind, file, extra), made by ``make()`` if absent; its error re-raised."""
        try:
            key = self._key(kind, path, *extra)
        except OSError:
            return make()  # let the maker raise its own clear error
        with self._lock:
            future = self._items.get(key)
            owner = future is None
            if future is None:
                future = self._items[key] = Future()
        if owner:
            try:
                future.set_result(make())
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter, then re-raised
                future.set_exception(exc)
        return future.result()


def driver_label(region: str | None) -> str:
    """Progress label of a driver's analysis (None: the main driver)."""
    return f"analyse {region} driver" if region else "analyse driver"


def driver_list(driving: str | None, parts: dict[str, str]) -> list[tuple[str, str]]:
    """(path, progress label) of every driver of a job (part drivers, then the main one)."""
    out = [(path, driver_label(region)) for region, path in parts.items()]
    return out + ([(driving, driver_label(None))] if driving else [])


def cached_track(cache: AnalysisCache, path: str, smoothing: SmoothConfig, face_index: int,
                 progress: Callable[[int, int], None] | None = None) -> AttributeTrack:
    """:func:`icface_video.driving.load_track` through ``cache`` (one key for every caller)."""
    return cache.get("track", path, lambda: load_track(path, smoothing, face_index, progress), smoothing, face_index)


def prefetch_tracks(cache: AnalysisCache, drivers: Iterable[tuple[str, str]], smoothing: SmoothConfig,
                    face_index: int, progress: Callable[[str, int, int], None] | None = None) -> threading.Thread:
    """Start analysing drivers into ``cache`` in a daemon thread; returns the thread.

    Args:
        drivers: (path, progress label) pairs, analysed in order.
        progress: called as ``progress(label, done, total)``.
    Errors stay in the cache and are raised to whoever asks for that driver.
    """
    items = list(drivers)

    def work() -> None:
        for path, label in items:
            step = (lambda done, total, label=label: progress(label, done, total)) if progress else None
            try:
                cached_track(cache, path, smoothing, face_index, step)
            except BaseException:  # noqa: BLE001 - kept in the cache for the render to raise
                pass

    thread = threading.Thread(target=work, name="icface-prefetch", daemon=True)
    thread.start()
    return thread
