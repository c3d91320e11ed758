"""Settings, read from `GATEWAY_*` environment variables and a `.env` file."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite+aiosqlite:///./gateway.db",
        description="SQLAlchemy URL: sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db",
    )
    storage_url: str = Field(
        default="file://./gateway-files", description="file://directory or s3://bucket/prefix"
    )
    s3_endpoint_url: str | None = Field(default=None, description="endpoint of an S3-compatible server")
    host: str = "127.0.0.1"
    port: int = 8000
    auto_migrate: bool = Field(
        default=True, description="apply pending migrations when `gateway serve` starts"
    )
    log_level: str = "INFO"
