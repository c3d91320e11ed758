"""Who is calling: a backend with an API key, an end user with a JWT, or (with no credentials
configured at all) a developer on this machine, in open development mode.

API keys are random strings shown once; only their SHA-256 hashes are stored (a key has 256 bits
of entropy, so a slow hash would add nothing). User tokens are HS256 with a shared secret, or
RS256/ES256 signed by keys published at a JWKS URL, which are cached and fetched again when a token
names a key id not seen yet.
"""

import asyncio
import enum
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from gateway.config import Settings, is_loopback
from gateway.data import api_keys, users
from gateway.data.access import EVERYTHING, Access
from gateway.database import Database
from gateway.errors import Unauthenticated
from gateway.validation import MAX_IDENTIFIER_CHARS, string_problem

logger = logging.getLogger("gateway.auth")

API_KEY_PREFIX = "gw_"
JWKS_ALGORITHMS = ("RS256", "ES256")
JWKS_MIN_REFRESH_SECONDS = 10.0  # the JWKS is fetched at most this often (unknown key ids, failures)
AUTH_SETTINGS_HINT = (
    "set GATEWAY_API_KEYS, GATEWAY_JWT_SECRET or GATEWAY_JWKS_URL, "
    "or create a key with `gateway api-key create`"
)


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_prefix(key: str) -> str:
    """Enough of a key to tell keys apart in a list, far too little to guess the rest."""
    return key[: len(API_KEY_PREFIX) + 6]


class CallerKind(enum.Enum):
    BACKEND = "backend"
    USER = "user"
    DEVELOPER = "developer"  # open development mode: no credentials configured, loopback only
    NOBODY = "nobody"  # a request that runs no operation (the GraphiQL page): reaches no row


@dataclass(frozen=True)
class Caller:
    kind: CallerKind
    name: str  # the key's name, the user's identifier, or "open development mode"
    user_id: str | None = None

    @property
    def access(self) -> Access:
        if self.kind is CallerKind.USER:
            return Access(user_id=self.user_id, user_identifier=self.name)
        if self.kind is CallerKind.NOBODY:
            return NO_ROWS
        return EVERYTHING


DEVELOPER = Caller(CallerKind.DEVELOPER, "open development mode")
NOBODY = Caller(CallerKind.NOBODY, "nobody")
NO_ROWS = Access(user_id="00000000-0000-0000-0000-000000000000")  # the nil UUID: no user's id


class OpenModeRefused(RuntimeError):
    """Open development mode on an address other machines can reach."""


async def decide_open_mode(settings: Settings, db: Database) -> bool:
    """Open development mode: no API key (environment or CLI) and no user tokens configured.
    Refused unless bound to loopback. Decided at start: in open mode, keys created later with
    the CLI take effect at the next start."""
    if settings.api_key_list or settings.user_tokens_configured:
        return False
    async with db.session() as session:
        if await api_keys.count_live_keys(session) > 0:
            return False
    if not is_loopback(settings.host):
        raise OpenModeRefused(
            f"refusing to serve on {settings.host} with no authentication configured: anyone who can "
            f"reach it could read and change every conversation; {AUTH_SETTINGS_HINT} (or bind to "
            "127.0.0.1 for open development mode)"
        )
    return True


class JwksKeys:
    """The signing keys published at a JWKS URL, cached for `cache_seconds`."""

    def __init__(self, url: str, cache_seconds: int, http: httpx.AsyncClient) -> None:
        self.url = url
        self.cache_seconds = cache_seconds
        self.http = http
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = -float("inf")
        self._attempted_at = -float("inf")
        self._lock = asyncio.Lock()

    async def key(self, key_id: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        stale = now - self._fetched_at > self.cache_seconds
        if (stale or key_id not in self._keys) and now - self._attempted_at > JWKS_MIN_REFRESH_SECONDS:
            await self._refresh()
        if not self._keys:
            raise Unauthenticated("user tokens cannot be checked now: the JWKS is unreachable")
        if key_id is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        found = self._keys.get(key_id)
        if found is None:
            raise Unauthenticated(f"the token's signing key {key_id!r} is not in the JWKS")
        return found

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._attempted_at <= JWKS_MIN_REFRESH_SECONDS:
                return  # another request fetched (or failed to) while this one waited
            # Recorded before fetching: while the provider fails or hangs, requests do not queue
            # up behind one fetch after another; they use the keys known, or fail fast.
            self._attempted_at = time.monotonic()
            try:
                response = await self.http.get(self.url, timeout=10)
                response.raise_for_status()
                key_set = jwt.PyJWKSet.from_dict(response.json())
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as error:
                # Keep serving with the keys already known; tokens signed by them still pass.
                logger.warning("could not fetch the JWKS at %s: %s", self.url, error)
                return
            self._keys = {key.key_id: key for key in key_set.keys}
            self._fetched_at = time.monotonic()


@dataclass
class Credential:
    token: str
    header: str  # which header carried it, for messages


def credential_of(headers: Mapping[str, str]) -> Credential | None:
    api_key = headers.get("x-api-key")
    if api_key:
        return Credential(api_key.strip(), "X-API-Key")
    authorization = headers.get("authorization")
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be `Bearer <API key or token>`")
    return Credential(token.strip(), "Authorization")


def _loopback_host(headers: Mapping[str, str]) -> bool:
    host = headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return is_loopback(name.strip("[]"))


def _looks_like_jwt(token: str) -> bool:
    """A JWT has a header that decodes; an API key (ours start `gw_`, but GATEWAY_API_KEYS may hold
    anything, dots included) does not."""
    if token.count(".") != 2 or token.startswith(API_KEY_PREFIX):
        return False
    try:
        jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return False
    return True


class Authenticator:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._env_key_hashes = [hash_api_key(key) for key in settings.api_key_list]
        self._http = httpx.AsyncClient()
        self._jwks = (
            JwksKeys(settings.jwks_url, settings.jwks_cache_seconds, self._http)
            if settings.jwks_url
            else None
        )
        self.open_mode: bool | None = None

    async def start(self) -> None:
        """Decide, once, whether this is open development mode, and say so loudly."""
        self.open_mode = await decide_open_mode(self.settings, self.db)
        if not self.open_mode:
            logger.info("authentication: %s", await self.describe())
            return
        logger.warning(
            "OPEN DEVELOPMENT MODE: no API key or user token is configured, so every local caller can "
            "read and change everything; only loopback callers are answered. To secure it, %s.",
            AUTH_SETTINGS_HINT,
        )

    async def describe(self) -> str:
        """The credentials in force, for the start-up log (counts and kinds, never a secret)."""
        async with self.db.session() as session:
            stored = await api_keys.count_live_keys(session)
        parts = [
            f"{len(self._env_key_hashes) + stored} API keys ({len(self._env_key_hashes)} from "
            f"GATEWAY_API_KEYS, {stored} created with `gateway api-key create`)"
        ]
        if self.settings.jwt_secret is not None:
            parts.append("user tokens signed HS256 with GATEWAY_JWT_SECRET")
        if self.settings.jwks_url:
            parts.append(
                f"user tokens signed {'/'.join(JWKS_ALGORITHMS)} by the keys at {self.settings.jwks_url}"
            )
        return "; ".join(parts)

    async def close(self) -> None:
        await self._http.aclose()

    async def authenticate(self, headers: Mapping[str, str], client_host: str | None) -> Caller:
        if self.open_mode is None:
            await self.start()
        if self.open_mode:
            # The Host check stops DNS rebinding: a web page whose name resolves to 127.0.0.1
            # would otherwise reach this mode from the developer's own browser.
            if client_host is None or not is_loopback(client_host) or not _loopback_host(headers):
                raise Unauthenticated(
                    "the gateway runs in open development mode and answers loopback callers only, "
                    "addressed as localhost, 127.0.0.1 or [::1]"
                )
            return DEVELOPER
        credential = credential_of(headers)
        if credential is None:
            raise Unauthenticated(
                "credentials required: `Authorization: Bearer <API key or user token>` or `X-API-Key`"
            )
        if _looks_like_jwt(credential.token) and credential.header == "Authorization":
            return await self._user(credential.token)
        return await self._backend(credential.token)

    async def _backend(self, key: str) -> Caller:
        key_hash = hash_api_key(key)
        for index, known in enumerate(self._env_key_hashes):
            if hmac.compare_digest(known, key_hash):
                return Caller(CallerKind.BACKEND, f"GATEWAY_API_KEYS[{index}]")
        async with self.db.session() as session:
            stored = await api_keys.find_live_key(session, key_hash=key_hash)
        if stored is None:
            if key.count(".") == 2:  # shaped like a JWT, but its header does not decode
                raise Unauthenticated("the token is neither a known API key nor a valid JWT")
            raise Unauthenticated("the API key is not valid (unknown or revoked)")
        return Caller(CallerKind.BACKEND, stored.name)

    async def _user(self, token: str) -> Caller:
        claims = await self._verified_claims(token)
        identifier = claims.get(self.settings.jwt_user_claim)
        if not isinstance(identifier, str) or not identifier.strip():
            raise Unauthenticated(f"the token has no `{self.settings.jwt_user_claim}` claim naming the user")
        if string_problem(identifier) or len(identifier) > MAX_IDENTIFIER_CHARS:
            # No user can have such an identifier (upsertUser refuses it): the token names nobody.
            raise Unauthenticated(
                f"the token's `{self.settings.jwt_user_claim}` claim is no valid user identifier "
                f"(at most {MAX_IDENTIFIER_CHARS} characters of text)"
            )
        async with self.db.session() as session:
            found = await users.get_users_by_identifiers(session, identifiers=[identifier], access=EVERYTHING)
        user = found.get(identifier)
        if user is None:
            if not self.settings.jwt_create_users:
                raise Unauthenticated(f"no user has the identifier {identifier!r}")
            async with self.db.transaction() as session:
                user = await users.ensure_user(session, identifier=identifier)
        return Caller(CallerKind.USER, identifier, user_id=user.id)

    async def _verified_claims(self, token: str) -> dict[str, Any]:
        settings = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise Unauthenticated("the token is not a valid JWT") from error
        algorithm = header.get("alg")
        key: Any
        if algorithm == "HS256" and settings.jwt_secret is not None:
            key = settings.jwt_secret.get_secret_value()
        elif algorithm in JWKS_ALGORITHMS and self._jwks is not None:
            key = (await self._jwks.key(header.get("kid"))).key
        else:
            accepted = [*(["HS256"] if settings.jwt_secret else []), *(JWKS_ALGORITHMS if self._jwks else [])]
            raise Unauthenticated(f"tokens signed with {algorithm!r} are not accepted; accepted: {accepted}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                leeway=settings.jwt_leeway_seconds,
                options={"require": ["exp"], "verify_aud": settings.jwt_audience is not None},
            )
        except jwt.ExpiredSignatureError as error:
            raise Unauthenticated("the token has expired") from error
        except jwt.ImmatureSignatureError as error:
            raise Unauthenticated("the token is not valid yet (nbf)") from error
        except jwt.InvalidAudienceError as error:
            raise Unauthenticated("the token is for another audience (aud)") from error
        except jwt.InvalidIssuerError as error:
            raise Unauthenticated("the token is from another issuer (iss)") from error
        except jwt.MissingRequiredClaimError as error:
            raise Unauthenticated(f"the token lacks the `{error.claim}` claim") from error
        except jwt.PyJWTError as error:
            raise Unauthenticated("the token's signature or claims are not valid") from error
        return claims
