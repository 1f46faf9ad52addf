"""The studio's HTTP server: a small Starlette app, one static page, a JSON API, uvicorn.

Safety rules (README, "studio"):

* The server reads only the files the user named (on the command line) or uploaded, and
  the files it wrote itself; no request names a path on disk. Static files are a fixed
  list inside the package; downloads are looked up by name in the studio's own registry.
* Uploads are capped (``max_upload_mb``), read in chunks, and refused past the cap (413).
* A bad request or upload (not an image, no face, bad values) answers 4xx with
  ``{"error": "<file>: <problem>"}``, which the page shows; the server keeps running.
* POSTs from another origin (a web page trying to drive the local server) are refused,
  and on a loopback address so is any request whose Host is not this machine (DNS rebinding).
* It binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..errors import IcfaceError, InputError, UsageError
from .session import Studio, drive_controls, safe_name, slider_definitions

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: The only static files served (name -> content type).
STATIC_FILES = {"studio.js": "text/javascript", "studio.css": "text/css"}
UPLOAD_KINDS = ("source", "clip", "preset")


class TooLarge(Exception):
    pass


def _error(exc: Exception, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=status)


async def _json(request: Request) -> dict:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError:
        raise UsageError("request: not JSON") from None
    if not isinstance(data, dict):
        raise UsageError("request: expected a JSON object")
    return data


def _encode(rgb, draft: bool) -> tuple[bytes, str]:
    import cv2

    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if draft:
        return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes(), "image/jpeg"
    return cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes(), "image/png"


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def create_app(studio: Studio, max_upload_mb: float = 200.0, loopback_only: bool = True) -> Starlette:
    """The ASGI app of one :class:`Studio`.

    ``loopback_only``: answer only requests whose Host header names this machine
    (127.0.0.1, localhost, ::1), so a web page whose name is made to resolve to 127.0.0.1
    (DNS rebinding) gets nothing; set when the server listens on a loopback address.
    """
    from starlette.concurrency import run_in_threadpool

    limit = int(max_upload_mb * 1024 * 1024)

    def guarded(handler):
        async def wrapped(request: Request) -> Response:
            host_name = re.sub(r":\d+$", "", request.headers.get("host", ""))
            if loopback_only and host_name not in LOOPBACK_NAMES:
                return _error(UsageError(f"request for host {host_name!r} refused (this server answers 127.0.0.1)"), 403)
            if request.method == "POST":
                origin = request.headers.get("origin")
                host = request.headers.get("host", "")
                if origin and re.sub(r"^https?://", "", origin) != host:
                    return _error(UsageError(f"request from another origin ({origin}) refused"), 403)
            try:
                return await handler(request)
            except TooLarge:
                return _error(UsageError(f"upload: larger than the limit of {max_upload_mb:g} MB"), 413)
            except IcfaceError as exc:
                return _error(exc, 400)
            except Exception as exc:  # noqa: BLE001 - one line on the page, the server goes on
                return _error(UsageError(f"internal error: {type(exc).__name__}: {exc}"), 500)
        return wrapped

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return _error(UsageError(f"{name}: not found"), 404)
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])

    async def state(request: Request) -> Response:
        job = studio.job.as_json() if studio.job else None
        return JSONResponse({"sliders": slider_definitions(), "drive_controls": drive_controls(),
                             "source": studio.source_info(), "clip": studio.clip_info(),
                             "presets": studio.preset_names(), "outdir": str(studio.outdir), "job": job,
                             "max_upload_mb": max_upload_mb})

    async def upload(request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in UPLOAD_KINDS:
            return _error(UsageError(f"{kind}: not found"), 404)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise TooLarge()
        raw = request.headers.get("x-filename", "") or "upload"
        base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(raw.replace("\\", "/")).name).lstrip(".") or "upload"
        folder = studio.outdir / "uploads"
        folder.mkdir(exist_ok=True)
        path = folder / base
        n = 1
        while path.exists():
            n += 1
            path = folder / f"{Path(base).stem}-{n}{Path(base).suffix}"
        size = 0
        try:
            with open(path, "wb") as fh:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge()
                    fh.write(chunk)
            if size == 0:
                raise InputError(base, "empty upload")
            if kind == "source":
                info = await run_in_threadpool(studio.load_source, path)
                return JSONResponse({"source": info})
            if kind == "clip":
                info = await run_in_threadpool(studio.load_clip, path)
                return JSONResponse({"clip": info})
            name = await run_in_threadpool(studio.add_user_preset, path)
            return JSONResponse({"preset": name, "presets": studio.preset_names()})
        except BaseException as exc:
            path.unlink(missing_ok=True)
            if isinstance(exc, InputError):  # name the file as the user knows it, not our copy
                raise InputError(raw, str(exc).split(": ", 1)[-1]) from None
            raise

    async def source_image(request: Request) -> Response:
        if studio.still is None:
            return _error(UsageError("no source photo loaded"), 404)
        data, kind = _encode(studio.still.rgb, False)
        return Response(data, media_type=kind, headers={"Cache-Control": "no-store"})

    async def clip_frame(request: Request) -> Response:
        index = request.path_params["index"]
        if not 0 <= index < len(studio.thumbs):
            return _error(UsageError(f"frame {index}: not in the clip"), 404)
        return Response(studio.thumbs[index], media_type="image/jpeg")

    async def render(request: Request) -> Response:
        data = await _json(request)
        draft = bool(data.get("draft", False))
        rgb = await run_in_threadpool(studio.render, data.get("values") or {}, data.get("drive"),
                                      data.get("time", 0.0), draft, data.get("keys"))
        body, kind = await run_in_threadpool(_encode, rgb, draft)
        return Response(body, media_type=kind, headers={"Cache-Control": "no-store", "X-Draft": str(int(draft))})

    async def preset(request: Request) -> Response:
        data = await _json(request)
        values = await run_in_threadpool(studio.apply_preset, str(data.get("name", "")), data.get("values") or {})
        return JSONResponse({"values": values})

    async def export_preset(request: Request) -> Response:
        d = await _json(request)
        out = await run_in_threadpool(studio.export_preset, d.get("name"), str(d.get("description") or ""),
                                      d.get("values") or {}, d.get("drive"), bool(d.get("overwrite", False)))
        return JSONResponse(out | {"presets": studio.preset_names()})

    async def export_keyframes(request: Request) -> Response:
        d = await _json(request)
        out = await run_in_threadpool(studio.export_keyframes, d.get("name"), d.get("keys"),
                                      bool(d.get("overwrite", False)))
        return JSONResponse(out)

    async def commands(request: Request) -> Response:
        d = await _json(request)
        out = await run_in_threadpool(studio.commands, d.get("values") or {}, d.get("drive"),
                                      d.get("output") or "studio.mp4")
        return JSONResponse(out)

    async def start_render(request: Request) -> Response:
        d = await _json(request)
        job = await run_in_threadpool(studio.start_render, d.get("values") or {}, d.get("drive"),
                                      d.get("output") or "studio.mp4", d.get("keys"), bool(d.get("overwrite", False)))
        return JSONResponse(job.as_json())

    async def job(request: Request) -> Response:
        return JSONResponse(studio.job.as_json() if studio.job else None)

    async def download(request: Request) -> Response:
        name = request.path_params["name"]
        path = studio.files.get(name)
        if path is None or not path.is_file():
            return _error(UsageError(f"{name}: not a file this studio wrote"), 404)
        return FileResponse(path, filename=name)

    routes = [
        Route("/", guarded(index)),
        Route("/static/{name}", guarded(static)),
        Route("/api/state", guarded(state)),
        Route("/api/upload/{kind}", guarded(upload), methods=["POST"]),
        Route("/api/source.png", guarded(source_image)),
        Route("/api/clip/frame/{index:int}", guarded(clip_frame)),
        Route("/api/render", guarded(render), methods=["POST"]),
        Route("/api/preset", guarded(preset), methods=["POST"]),
        Route("/api/export/preset", guarded(export_preset), methods=["POST"]),
        Route("/api/export/keyframes", guarded(export_keyframes), methods=["POST"]),
        Route("/api/commands", guarded(commands), methods=["POST"]),
        Route("/api/render-video", guarded(start_render), methods=["POST"]),
        Route("/api/job", guarded(job)),
        Route("/files/{name}", guarded(download)),
    ]
    return Starlette(routes=routes)


def bind(host: str, port: int):
    """A listening socket on host:port (port 0: a free one). Raises UsageError when taken."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    sock.listen(64)
    return sock


def _server_class():
    import contextlib
    import signal
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopping on Ctrl-C / SIGTERM without re-raising the signal
        afterwards (the studio's normal end: exit 0)."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            wanted = (signal.SIGINT, signal.SIGTERM)
            previous = {s: signal.signal(s, self._stop) for s in wanted}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

        def _stop(self, signum, frame) -> None:
            if self.should_exit:
                self.force_exit = True  # a second Ctrl-C: do not wait for open connections
            self.should_exit = True

    return Server


def serve(studio: Studio, host: str = "127.0.0.1", port: int = 7860, open_browser: bool = True,
          max_upload_mb: float = 200.0, announce=print) -> None:
    """Serve until Ctrl-C (or SIGTERM); a running render is stopped and leaves no output."""
    import threading
    import webbrowser

    import uvicorn

    _Server = _server_class()
    sock = bind(host, port)
    actual = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{actual}/"
    import ipaddress

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    config = uvicorn.Config(create_app(studio, max_upload_mb, loopback), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=3, lifespan="off")
    server = _Server(config)
    announce(f"icface-video studio: {url}  (Ctrl-C stops it; files go to {studio.outdir})")
    if open_browser:
        threading.Timer(0.5, lambda: webbrowser.open(url)).start()
    try:
        server.run(sockets=[sock])
    finally:
        studio.stop()
        sock.close()
    announce("icface-video studio: stopped")


__all__ = ["create_app", "serve", "bind", "safe_name"]
