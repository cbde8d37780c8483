"""The FastAPI application: routers, error handlers, and the runtime's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api import errors
from api.routes import (
    access,
    approvals,
    audit,
    backups,
    exports,
    key_use,
    keys,
    ledger,
    replication,
    reports,
    transit,
)
from api.runtime import Runtime, build_runtime
from ledger.settings import Settings


def create_app(
    settings: Settings | None = None, runtime: Runtime | None = None
) -> FastAPI:
    """Build the app; the runtime is opened at start-up unless one is given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        current = runtime or build_runtime(settings or Settings())
        app.state.runtime = current
        if owned:
            current.start_scheduler()
        try:
            yield
        finally:
            if owned:
                current.close()
            else:
                current.record_stop()

    app = FastAPI(
        title="keyledger",
        version="1",
        description="An audit-first ledger for the lifecycle of cryptographic keys.",
        lifespan=lifespan,
    )
    if runtime is not None:
        app.state.runtime = runtime
    errors.install(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.include_router(keys.router)
    app.include_router(key_use.router)
    app.include_router(ledger.router)
    app.include_router(exports.router)
    app.include_router(backups.router)
    app.include_router(access.router)
    app.include_router(transit.router)
    app.include_router(audit.router)
    app.include_router(approvals.router)
    app.include_router(replication.router)
    app.include_router(reports.router)
    current = runtime.settings if runtime is not None else settings or Settings()
    if current.dev_clock:
        app.include_router(ledger.dev_router)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with bearer authentication declared for /docs."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        schema["security"] = [{"bearer": []}]
        create = schema["paths"]["/v1/keys"]["post"]
        create["requestBody"]["required"] = True
        app.openapi_schema = schema
    return app.openapi_schema
