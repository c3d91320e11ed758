"""Settings, read from `GATEWAY_*` environment variables and a `.env` file."""

import ipaddress

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    port: int = 8000
    auto_migrate: bool = Field(
        default=True, description="apply pending migrations when `gateway serve` starts"
    )
    log_level: str = "INFO"

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

    # Limits, checked before a query runs.
    max_query_depth: int = Field(default=15, ge=1)
    max_query_aliases: int = Field(default=30, ge=0)
    max_query_tokens: int = Field(default=5000, ge=1)
    max_query_cost: int = Field(default=5000, ge=1)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="largest request body")
    graphiql: bool = Field(default=True, description="serve the GraphiQL IDE at /graphql")
    introspection: bool = Field(default=True, description="answer introspection queries")

    @property
    def api_key_list(self) -> list[str]:
        if self.api_keys is None:
            return []
        return [key.strip() for key in self.api_keys.get_secret_value().split(",") if key.strip()]

    @property
    def user_tokens_configured(self) -> bool:
        return self.jwt_secret is not None or self.jwks_url is not None
