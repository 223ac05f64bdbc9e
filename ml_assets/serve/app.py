"""The prediction server: a FastAPI app over :class:`~ml_assets.serve.models.Champions`.

Endpoints: ``POST /predict/{kind}`` (one image as the raw body with an ``image/*`` or
``application/octet-stream`` content type, or one or more as the file parts of a
``multipart/form-data`` body), ``GET /health``, ``GET /ready``, ``GET /models``,
``GET /metrics`` (Prometheus) and FastAPI's ``/docs``.

Access (:class:`Guard`, outside the routes): with a token file (``ML_ASSETS_SERVE_TOKENS``, one
SHA-256 hex digest of a token per line) every path but the open ones
(``ML_ASSETS_SERVE_OPEN_PATHS``) needs ``Authorization: Bearer <token>`` whose digest matches
one of them (``hmac.compare_digest`` against each); a refusal is a 401, counted in
``ml_assets_serve_unauthorized_total``. Bodies over ``max_body_bytes`` are a 413, by their
``Content-Length`` or while they stream. CORS is added only for ``cors_origins``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from ml_assets.serve import OPEN_PATHS
from ml_assets.serve.metrics import Metrics
from ml_assets.serve.models import BadImage, Champions, decode_image

RAW_TYPES = ("image/", "application/octet-stream")
ROUTES = {"predict", "health", "ready", "models", "metrics", "docs", "openapi.json"}


@dataclass
class Settings:
    home: Path
    kinds: list[str]
    poll: float = 1.0  # seconds between reads of the champion records; 0: never
    max_body_bytes: int = 20 * 2**20
    max_images: int = 16
    max_pixels: int = 40_000_000
    timeout: float = 30.0  # seconds per prediction request
    threads: int = 0  # onnxruntime intra-op threads; 0: its default
    token_hashes: list[str] | None = None  # None: no tokens asked
    open_paths: tuple[str, ...] = OPEN_PATHS
    cors_origins: list[str] = field(default_factory=list)


def read_token_hashes(path: Path) -> list[str]:
    """The SHA-256 hex digests in a token file (blank lines and ``#`` comments skipped)."""
    hashes = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip().lower()
        if not line:
            continue
        if len(line) != 64 or any(c not in "0123456789abcdef" for c in line):
            raise ValueError(f"{path}:{number}: not a SHA-256 hex digest (64 hex digits)")
        hashes.append(line)
    if not hashes:
        raise ValueError(f"{path}: no token digest in the file: every request would be refused")
    return hashes


def split_list(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def error(status: int, message: str, headers: dict | None = None) -> Response:
    return Response(
        orjson.dumps({"detail": message}), status, headers, media_type="application/json"
    )


class TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the limit of {limit} bytes")


class Guard:
    """ASGI middleware: bearer tokens and the body size limit, before any route runs."""

    def __init__(self, app, settings: Settings, metrics: Metrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics

    def allowed(self, scope) -> bool:
        hashes = self.settings.token_hashes
        if hashes is None or scope["path"] in self.settings.open_paths:
            return True
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        matches = [hmac.compare_digest(digest, h) for h in hashes]  # no early exit
        return scheme.lower() == "bearer" and bool(token.strip()) and any(matches)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.settings.max_body_bytes
        if not self.allowed(scope):
            route = scope["path"].split("/")[1] if scope["path"].count("/") else ""
            self.metrics.unauthorized.labels(f"/{route}" if route in ROUTES else "other").inc()
            response = error(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await error(413, TooLarge(limit).detail)(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise TooLarge(limit)
            return message

        await self.app(scope, limited, send)


async def read_images(request: Request, settings: Settings) -> list[bytes]:
    """The uploaded images' bytes, at most ``max_images``: the raw body, or every file part of
    a multipart form."""
    ctype = request.headers.get("content-type", "").lower()
    too_many = f"too many images: at most {settings.max_images} a request"
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=settings.max_images, max_fields=100)
        except HTTPException as err:
            if "too many files" in str(err.detail).lower():
                raise BadImage(too_many, 413) from None
            raise BadImage(f"unreadable multipart body: {err.detail}") from err
        files = [v for _, v in form.multi_items() if not isinstance(v, str)]
        if not files:
            raise BadImage("the multipart form holds no file part (send images as files)")
        data = [await f.read() for f in files]
    elif ctype.startswith(RAW_TYPES):
        data = [await request.body()]
    else:
        raise BadImage(
            f"content type {ctype or 'none'!r} is not accepted: send an image (image/*, "
            "application/octet-stream) as the body, or images as multipart/form-data files",
            415,
        )
    if len(data) > settings.max_images:
        raise BadImage(too_many, 413)
    return data


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()
    champions = Champions(
        settings.home, settings.kinds, settings.poll, settings.threads, metrics.loaded
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(champions.start)
        yield
        await run_in_threadpool(champions.stop)

    app = FastAPI(title="ml_assets prediction server", lifespan=lifespan)
    app.state.champions, app.state.metrics = champions, metrics
    add_access(app, settings, metrics)

    def answer(served, data: list[bytes], confidence: float) -> list[dict]:
        images = [decode_image(d, settings.max_pixels) for d in data]
        return served.predict(images, confidence)

    @app.post("/predict/{kind}", summary="Predict with the champion of a kind")
    async def predict(kind: str, request: Request, confidence: float = 0.25) -> Response:
        served = champions.models.get(kind)  # the model this request finishes on
        if served is None:
            if kind in settings.kinds:
                metrics.requests.labels(kind, "503", "").inc()
                return error(503, f"{kind}: champion not loaded yet ({champions.errors.get(kind)})")
            metrics.requests.labels("unknown", "404", "").inc()  # labels only of served kinds
            return error(404, f"no model {kind!r} here; served: {', '.join(settings.kinds)}")
        started, status = time.perf_counter(), 200
        try:

            async def handle():
                data = await read_images(request, settings)
                metrics.batch.labels(kind).observe(len(data))
                return await run_in_threadpool(answer, served, data, confidence)

            results = await asyncio.wait_for(handle(), settings.timeout)
            body = {"kind": kind, "version": served.version, "predictions": results}
            return Response(
                orjson.dumps(body),
                media_type="application/json",
                headers={"X-Model-Version": served.version},
            )
        except BadImage as err:
            status = err.status
            return error(status, str(err))
        except HTTPException as err:  # the body over the size limit
            status = err.status_code
            return error(status, str(err.detail))
        except TimeoutError:
            status = 504
            return error(status, f"no answer within {settings.timeout} s")
        finally:
            metrics.requests.labels(kind, str(status), served.version).inc()
            if status == 200:
                metrics.latency.labels(kind, served.version).observe(time.perf_counter() - started)

    add_status_routes(app, settings, champions, metrics)
    return app


def add_access(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """The :class:`Guard` (tokens, body size) and, only for ``cors_origins``, CORS."""
    app.add_middleware(Guard, settings=settings, metrics=metrics)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )


def add_status_routes(
    app: FastAPI, settings: Settings, champions: Champions, metrics: Metrics
) -> None:
    """``GET /health``, ``/ready``, ``/models`` and ``/metrics``."""

    @app.get("/health", summary="The process is up")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", summary="Every requested champion is loaded")
    def ready() -> Response:
        body = {
            "ready": champions.ready,
            "kinds": {k: k in champions.models for k in settings.kinds},
            "errors": champions.errors,
        }
        status = 200 if champions.ready else 503
        return Response(orjson.dumps(body), status, media_type="application/json")

    @app.get("/models", summary="What each kind serves: version, lineage, export")
    def models() -> dict:
        return {
            "models": [m.describe() for k in settings.kinds if (m := champions.models.get(k))],
            "errors": champions.errors,
        }

    @app.get("/metrics", summary="Prometheus metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
