"""Settings, read from `GATEWAY_*` environment variables and a `.env` file."""

import ipaddress
import re
from datetime import timedelta
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# URL schemes people write, and the async driver each means; other databases are not supported.
DATABASE_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}
# Retention of more days than this is a mistake (and a cutoff before year 1 cannot be computed).
MAX_RETENTION_DAYS = 100_000
RATE_PERIODS = {"second": 1, "minute": 60, "hour": 3600}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(second|minute|hour)\s*")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
    s3_connect_timeout_seconds: float = Field(default=5.0, gt=0, description="S3: connecting gives up after")
    s3_read_timeout_seconds: float = Field(
        default=30.0, gt=0, description="S3: waiting for an answer (or the next bytes of one) gives up after"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64, description="server processes `gateway serve` runs")
    auto_migrate: bool = Field(
        default=True, description="apply pending migrations when `gateway serve` starts"
    )
    log_level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] = "INFO"
    log_format: Literal["text", "json"] = Field(default="text", description="json: one JSON object a line")
    cors_origins: str = Field(
        default="", description="comma-separated origins of browser frontends allowed to call the API"
    )
    rate_limit: str | None = Field(default=None, description="requests per caller, e.g. 600/minute")
    metrics: bool = Field(default=True, description="serve Prometheus metrics at /metrics")

    # Authentication: backends use API keys, end users JWTs. With none of these set (and no key
    # created with the CLI) the gateway runs in open development mode, on loopback only.
    api_keys: SecretStr | None = Field(
        default=None, description="comma-separated API keys, besides those created with the CLI"
    )
    jwt_secret: SecretStr | None = Field(default=None, description="HS256 secret of user tokens")
    jwks_url: str | None = Field(default=None, description="JWKS of RS256/ES256 user tokens")
    jwks_cache_seconds: int = Field(default=300, ge=0, description="how long fetched JWKS keys are kept")
    jwt_user_claim: str = Field(default="sub", description="claim holding the user's identifier")
    jwt_audience: str | None = Field(default=None, description="required `aud` claim, when set")
    jwt_issuer: str | None = Field(default=None, description="required `iss` claim, when set")
    jwt_leeway_seconds: int = Field(default=0, ge=0, description="clock skew allowed on exp and nbf")
    jwt_create_users: bool = Field(
        default=True, description="a token's first request creates its user when missing"
    )

    # Element bytes (storage_url above): uploads and read URLs.
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1, description="largest element upload")
    allowed_mime_types: str = Field(
        default="", description="comma-separated MIME types uploads may have (`image/*` allowed); empty: any"
    )
    url_expiry_seconds: int = Field(default=3600, ge=1, description="how long element read URLs work")
    url_signing_secret: SecretStr | None = Field(
        default=None, description="key of local files' signed URLs; set it when replicas share files"
    )
    public_url: str | None = Field(
        default=None, description="the gateway's external base URL, for local files' URLs"
    )
    reaper_interval_seconds: float = Field(
        default=30.0, gt=0, description="how often failed object deletions are retried at most"
    )
    retention_days: float | None = Field(
        default=None,
        gt=0,
        le=MAX_RETENTION_DAYS,
        description="delete threads not active for this many days (with their files), continuously",
    )

    # Subscriptions (gateway.live, gateway.events).
    event_retention: timedelta = Field(
        default=timedelta(hours=24),
        description="how long the event log keeps events for subscribers resuming with `after` "
        "(seconds, or an ISO 8601 duration such as PT24H)",
    )
    event_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description="how often the event log is read without a wake-up (NOTIFY, own writes)",
    )
    subscription_buffer: int = Field(
        default=1000,
        ge=1,
        description="events queued for one subscriber connection before it is closed as too slow",
    )
    ws_per_message_deflate: bool = Field(
        default=False,
        description="compress WebSocket messages (permessage-deflate) when the client offers it: "
        "off by default, since each socket compresses every event on its own, which cost the "
        "fan-out a third of its CPU, for events of a few hundred bytes",
    )
    subscription_auth_recheck_seconds: float = Field(
        default=60.0, gt=0, description="how often a subscriber's API key is checked again (revocation)"
    )

    # Limits, checked before a query runs.
    max_query_depth: int = Field(default=15, ge=1)
    max_query_aliases: int = Field(default=30, ge=0)
    max_query_tokens: int = Field(default=5000, ge=1)
    max_query_cost: int = Field(default=5000, ge=1)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="largest request body")
    graphiql: bool = Field(default=True, description="serve the GraphiQL IDE at /graphql")
    introspection: bool = Field(default=True, description="answer introspection queries")
    compiled_reads: bool = Field(
        default=True,
        description="answer the queries it covers with one SQL statement that builds the JSON; "
        "false: every query runs on the resolvers (for debugging)",
    )
    compiled_reads_verify: bool = Field(
        default=False,
        description="also run each compiled query on the resolvers and answer an error when they "
        "differ (the test suite runs so; doubles the cost of reads)",
    )

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str) -> str:
        """`postgresql://` means asyncpg and `sqlite://` aiosqlite; anything else is refused."""
        scheme, separator, rest = url.partition("://")
        driver = DATABASE_DRIVERS.get(scheme.lower())
        if not separator or driver is None:
            raise ValueError(
                f"unsupported database URL scheme {scheme!r}: use postgresql://user:password@host:5432/db "
                "(asyncpg) or sqlite:///path/gateway.db"
            )
        return f"{driver}://{rest}"

    @field_validator("storage_url")
    @classmethod
    def _supported_store(cls, url: str) -> str:
        scheme, separator, rest = url.partition("://")
        if (
            not separator
            or scheme.lower() not in ("file", "s3")
            or (scheme.lower() == "s3" and not rest.strip("/"))
        ):
            raise ValueError(f"unsupported storage URL {url!r}: use file://directory or s3://bucket/prefix")
        return url

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, level: object) -> object:
        return level.upper() if isinstance(level, str) else level

    @field_validator("cors_origins")
    @classmethod
    def _listed_origins(cls, origins: str) -> str:
        for origin in (item.strip() for item in origins.split(",")):
            if origin == "*":
                # Every call carries a credential; a wildcard would let any web page use a
                # developer's open gateway, or a token a page got hold of.
                raise ValueError(
                    "`*` is not accepted: list the frontends' origins, e.g. https://chat.example.com"
                )
            if origin and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port], no path")
        return origins

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, rate: str | None) -> str | None:
        if rate is not None and rate.strip() and (not _RATE.fullmatch(rate) or int(rate.split("/")[0]) < 1):
            raise ValueError(f"{rate!r} is not a rate: write e.g. 600/minute (per second, minute or hour)")
        return rate.strip() or None if rate is not None else None

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip().rstrip("/") for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def rate(self) -> tuple[int, int] | None:
        """(requests, period in seconds) of GATEWAY_RATE_LIMIT, or None: no limit."""
        match = _RATE.fullmatch(self.rate_limit) if self.rate_limit else None
        return (int(match[1]), RATE_PERIODS[match[2]]) if match else None

    @property
    def api_key_list(self) -> list[str]:
        if self.api_keys is None:
            return []
        return [key.strip() for key in self.api_keys.get_secret_value().split(",") if key.strip()]

    @property
    def user_tokens_configured(self) -> bool:
        return self.jwt_secret is not None or self.jwks_url is not None
