"""The page's web application (Starlette) and the server around it (uvicorn).

Bound to 127.0.0.1 by default. On any other address every request needs the token (an
``Authorization: Bearer`` header, or ``?token=`` once, which sets an HttpOnly cookie): a request
without it is refused with 401 and one log line (never the token itself). It serves the page,
its own thumbnails (only names it made, only from its state folder: anything else is 404) and
the upload form's POST, whose body is capped (413 above the limit, 411 without a length).
"""
from __future__ import annotations

import hmac
import ipaddress
import threading
from typing import Any
from urllib.parse import parse_qs

from .render import error_page, page
from .state import PageState, UploadRefused

COOKIE = "edgecxr_token"
DEFAULT_LIMIT = 20_000_000  # bytes: a DICOM CXR is 5-30 MB uncompressed, a PNG far less


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenGate:
    """ASGI wrapper: every HTTP request must carry ``token`` (constant-time compare)."""

    def __init__(self, app: Any, token: str, log: Any) -> None:
        self.app, self.token, self.log = app, token, log

    def _presented(self, scope: dict[str, Any]) -> tuple[str | None, bool]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        if query:
            return query[0], True
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                return value, False
        return None, False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given, from_query = self._presented(scope)
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            if not from_query:
                return await self.app(scope, receive, send)
            from starlette.responses import RedirectResponse  # the token leaves the URL at once

            resp = RedirectResponse(scope.get("path", "/"), status_code=303)
            resp.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            return await resp(scope, receive, send)
        client = (scope.get("client") or ("?", 0))[0]
        self.log(f"refused {scope.get('method')} {scope.get('path')} from {client}: {'wrong' if given else 'no'} token")
        from starlette.responses import HTMLResponse

        await HTMLResponse(error_page(401, "this page needs its token (ask whoever runs the device)"), status_code=401)(scope, receive, send)


def build_app(state: PageState, limit: int = DEFAULT_LIMIT) -> Any:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
    from starlette.routing import Route

    def render(message: str = "", cls: str = "warn", highlight: str | None = None, status: int = 200) -> HTMLResponse:
        html = page(state.model_summary(), state.selftest_line, state.drift(), state.decisions(), message, cls, highlight, limit / 1e6)
        return HTMLResponse(html, status_code=status)

    async def home(request: Request) -> HTMLResponse:
        r = request.query_params.get("r")
        return await run_in_threadpool(render, "", "ok", r)

    async def classify(request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return HTMLResponse(error_page(411, "the upload must say its length"), status_code=411)
        if int(length) > limit + 4096:
            return HTMLResponse(error_page(413, f"upload too large ({int(length) / 1e6:.1f} MB; limit {limit / 1e6:g} MB)"), status_code=413)
        form = await request.form(max_files=1, max_fields=2, max_part_size=limit)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            return await run_in_threadpool(render, "no file in the upload (field 'image')", "bad", None, 400)
        data = await upload.read(limit + 1)
        if len(data) > limit:
            return HTMLResponse(error_page(413, f"upload too large (limit {limit / 1e6:g} MB)"), status_code=413)
        try:
            item = await run_in_threadpool(state.classify_upload, data, upload.filename or "")
        except UploadRefused as exc:
            state.log(f"upload refused ({exc.status}): {exc}")
            return await run_in_threadpool(render, str(exc), "bad", None, exc.status)
        return RedirectResponse(f"/?r={item['id']}", status_code=303)

    async def thumb(request: Request) -> Any:
        path = state.thumb_path(request.path_params["name"])
        if path is None:
            return HTMLResponse(error_page(404, "not found"), status_code=404)
        return FileResponse(path, media_type="image/png")

    async def status(request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(lambda: {"model": state.model_summary(), "drift": state.drift(),
                                                             "selftest": state.selftest_line, "decisions": state.decisions()}))

    routes = [Route("/", home), Route("/classify", classify, methods=["POST"]), Route("/thumbs/{name:path}", thumb),
              Route("/status.json", status)]
    return Starlette(routes=routes)


class PageServer:
    """uvicorn in a thread (``start``) or in the foreground (``run``)."""

    def __init__(self, state: PageState, host: str, port: int, token: str | None, limit: int = DEFAULT_LIMIT) -> None:
        import uvicorn

        if not is_loopback(host) and not token:
            raise ValueError(f"--http {host}:{port} is not localhost: give --token TOKEN (every request must then carry it)")
        app = build_app(state, limit)
        if token:
            app = TokenGate(app, token, state.log)
        self.url = f"http://{host}:{port}/"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                                    server_header=False, timeout_graceful_shutdown=2))
        self.thread: threading.Thread | None = None
        where = "localhost only" if is_loopback(host) else "reachable from the network"
        state.log(f"page on {self.url} ({where}; {'every request needs the token' if token else 'no token'})")

    def run(self) -> None:
        self.server.run()

    def start(self) -> PageServer:
        self.thread = threading.Thread(target=self.server.run, name="edgecxr-page", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
