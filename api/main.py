"""The FastAPI application: routers, error handlers, and the runtime's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors
from api.routes import keys, ledger
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

    app = FastAPI(
        title="keyledger",
        version="1",
        description="An audit-first ledger for the lifecycle of cryptographic keys.",
        lifespan=lifespan,
    )
    if runtime is not None:
        app.state.runtime = runtime
    errors.install(app)
    app.include_router(keys.router)
    app.include_router(ledger.router)
    current = runtime.settings if runtime is not None else settings or Settings()
    if current.dev_clock:
        app.include_router(ledger.dev_router)
    return app
