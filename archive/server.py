"""The archive's object endpoint (the HTTP side of the transfer protocol).

    PUT  /objects/{sha256}   body: the object; Content-Digest: sha-256=:…:
    GET  /objects/{sha256}   the object (Range requests honoured)
    HEAD /objects/{sha256}
    GET  /healthz

A PUT is answered 201 only once the body hashed to the announced digest,
was fsync'd into the cache tier and its copy row committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from archive.store import TIER_CACHE, cache_store, ensure_inbox, keep_present, present_size, record_copies
from services.storage import object_key
from services.transfer import parse_content_digest

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail},
                        status_code=status, media_type="application/problem+json")


def create_app() -> FastAPI:
    app = FastAPI(title="PACS Cluster archive", docs_url=None, redoc_url=None, openapi_url=None)
    store = cache_store()
    inbox = ensure_inbox()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "tier": TIER_CACHE}

    @app.put("/objects/{sha256}")
    async def put_object(sha256: str, request: Request) -> Response:
        if not _SHA_RE.match(sha256):
            return _problem(400, "Bad object name", "the path must be a lowercase hex SHA-256")
        announced = parse_content_digest(request.headers.get("content-digest", ""))
        if announced is not None and announced != sha256:
            return _problem(400, "Digest mismatch", "Content-Digest differs from the object name")
        key = object_key(sha256)
        size = present_size(store, key)
        if size is not None and keep_present(store, [(sha256, key, size)]):
            return Response(status_code=200)
        tmp = inbox / f".http.{sha256}.{os.getpid()}.{id(request)}.tmp"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as fh:
                async for chunk in request.stream():
                    digest.update(chunk)
                    fh.write(chunk)
                    size += len(chunk)
                fh.flush()
                await asyncio.to_thread(os.fsync, fh.fileno())
            if digest.hexdigest() != sha256:
                return _problem(422, "Digest mismatch",
                                f"the body hashed to {digest.hexdigest()}, not {sha256}")
            await asyncio.to_thread(store.put_file, key, tmp, sha256)
            await asyncio.to_thread(record_copies, [(sha256, key, size)])
        finally:
            Path(tmp).unlink(missing_ok=True)
        return Response(status_code=201)

    @app.api_route("/objects/{sha256}", methods=["GET", "HEAD"])
    def get_object(sha256: str) -> Response:
        if not _SHA_RE.match(sha256):
            return _problem(400, "Bad object name", "the path must be a lowercase hex SHA-256")
        path = store.path(object_key(sha256))
        if not path.is_file():
            return _problem(404, "Not found", f"no object {sha256} in the cache tier")
        return FileResponse(path, media_type="application/dicom")

    return app
