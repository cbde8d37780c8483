"""Settings, read once at start-up from ``KEYLEDGER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting of the service and the command-line tools."""

    model_config = SettingsConfigDict(env_prefix="KEYLEDGER_", extra="ignore")

    data_dir: Path = Field(
        default=Path("var"),
        description="Folder for the SQLite ledger and the local keys.",
    )
    database_url: str | None = Field(
        default=None,
        description="postgresql://user:pw@host:port/db (default: SQLite in data_dir).",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bootstrap admin token (default: generated on first start).",
    )
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    destruction_min_days: int = Field(default=7, ge=1)
    destruction_max_days: int = Field(default=30, ge=1)
    destruction_default_days: int = Field(default=30, ge=1)
    checkpoint_interval: int = Field(default=100, ge=1)
    scheduler_interval_seconds: float = Field(default=30.0, gt=0)
    dev_clock: bool = Field(
        default=False,
        description="Experimental: allow the admin to move the clock forward.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    forwarded_allow_ips: str | None = Field(
        default=None,
        description="Proxies (comma-separated addresses, or *) whose "
        "X-Forwarded-For names the client; by default none is trusted and the "
        "recorded client address is the connection's peer.",
    )
    backup_settings_file: Path | None = Field(
        default=None,
        description="JSON file of backup targets and the default backup policy; "
        "what differs from the ledger is recorded as events at start-up.",
    )

    @model_validator(mode="after")
    def _check_destruction_bounds(self) -> Settings:
        low, high = self.destruction_min_days, self.destruction_max_days
        if not low <= self.destruction_default_days <= high:
            raise ValueError(
                "KEYLEDGER_DESTRUCTION_DEFAULT_DAYS must lie between "
                "KEYLEDGER_DESTRUCTION_MIN_DAYS and KEYLEDGER_DESTRUCTION_MAX_DAYS."
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ledger.sqlite3').resolve()}"
