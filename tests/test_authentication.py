"""Authentication: who may call the gateway, as a backend or a user sees it over HTTP.

Backends send an API key (from GATEWAY_API_KEYS, or created with the real `gateway api-key`
command in a subprocess); users send a JWT, HS256 with the shared secret or RS256/ES256 signed by
keys a small real HTTP server publishes as a JWKS. With nothing configured the gateway runs in open
development mode, for loopback callers only, and `gateway serve` refuses to listen elsewhere.
Every refusal is a 401 with code UNAUTHENTICATED and `WWW-Authenticate: Bearer`.
"""

import asyncio
import base64
import json
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette

from gateway.auth import OpenModeRefused, decide_open_mode
from gateway.config import Settings
from gateway.database import Database
from tests.conftest import (
    TEST_API_KEY,
    TEST_JWT_SECRET,
    Api,
    clear_tables,
    client_of,
    running,
    secured_settings,
    user_token,
)
from tests.test_cli import _free_port, gateway

THREADS = "{ threads { edges { node { id } } } }"
VIEWER = "{ viewer { identifier } }"
UPSERT_THREAD = 'mutation { upsertThread(input: {id: "018f0000-0000-7000-8000-0000000000a1"}) { id } }'
OTHER_SECRET = "another-secret-0123456789abcdefghijklmnopqrstuvwxyz0123"


async def refused(api: Api, query: str = THREADS, **headers: str) -> str:
    """Assert the request is refused as unauthenticated; returns the message."""
    response = await api.post(query, None, **headers)
    assert response.status_code == 401, response.text
    assert response.headers.get("www-authenticate") == "Bearer"
    errors = response.json()["errors"]
    assert len(errors) == 1 and errors[0]["extensions"]["code"] == "UNAUTHENTICATED", errors
    message: str = errors[0]["message"]
    return message


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def viewer_of(api: Api, token: str) -> str:
    data = await api.with_headers(**bearer(token)).ok(VIEWER)
    identifier: str = data["viewer"]["identifier"]
    return identifier


async def user_exists(api: Api, identifier: str) -> bool:
    backend = api.with_headers(**bearer(TEST_API_KEY))
    data = await backend.ok("query($i: String) { user(identifier: $i) { id } }", i=identifier)
    return data["user"] is not None


def unsigned_token(**claims: Any) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


# 1. Backend API keys


async def test_environment_key_in_either_header_reaches_everything(secured_api: Api) -> None:
    for headers in (
        bearer(TEST_API_KEY),
        {"X-API-Key": TEST_API_KEY},
        {"authorization": f"bearer {TEST_API_KEY}"},
    ):
        backend = secured_api.with_headers(**headers)
        assert (await backend.ok(THREADS))["threads"]["edges"] == []
        assert (await backend.ok(VIEWER))["viewer"] is None
    assert "not valid" in await refused(secured_api, **bearer(TEST_API_KEY + "x"))
    await refused(secured_api, **{"X-API-Key": "gw_wrong"})
    assert "Bearer" in await refused(secured_api, Authorization=f"Basic {TEST_API_KEY}")
    await refused(secured_api, Authorization="Bearer ")


async def api_key_cli(*args: str, cwd: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(gateway, "api-key", *args, cwd=cwd, database_url=database_url)


async def test_key_created_with_the_cli_works_until_revoked(
    secured_api: Api, db: Database, database_url: str, tmp_path: Path
) -> None:
    try:
        created = await api_key_cli("create", "--name", "ci", cwd=tmp_path, database_url=database_url)
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        assert created.stdout == key + "\n" and key.startswith("gw_") and len(key) >= 40, created.stdout
        assert key not in created.stderr
        assert (await secured_api.with_headers(**bearer(key)).ok(THREADS))["threads"]["edges"] == []
        assert (await secured_api.with_headers(**{"X-API-Key": key}).ok(VIEWER))["viewer"] is None

        async with db.session() as session:
            rows = (await session.execute(sa.text("SELECT * FROM gateway_api_keys"))).all()
        assert len(rows) == 1
        assert all(key not in str(value) for value in rows[0]), "the plaintext key is stored"

        listed = await api_key_cli("list", cwd=tmp_path, database_url=database_url)
        assert listed.returncode == 0, listed.stderr
        assert "ci" in listed.stdout and key[:9] in listed.stdout, listed.stdout
        assert key[: len(key) // 2] not in listed.stdout + listed.stderr, "list shows too much of the key"

        duplicate = await api_key_cli("create", "--name", "ci", cwd=tmp_path, database_url=database_url)
        assert duplicate.returncode == 1, duplicate.stdout
        assert duplicate.stdout == "" and "ci" in duplicate.stderr, duplicate

        revoked = await api_key_cli("revoke", "ci", cwd=tmp_path, database_url=database_url)
        assert revoked.returncode == 0, revoked.stderr
        assert "not valid" in await refused(secured_api, **bearer(key))

        # The name is free again once its key is revoked; the old key stays refused.
        again = await api_key_cli("create", "--name", "ci", cwd=tmp_path, database_url=database_url)
        assert again.returncode == 0, again.stderr
        assert await secured_api.with_headers(**bearer(again.stdout.strip())).ok(THREADS)
        await refused(secured_api, **{"X-API-Key": key})
    finally:
        await clear_tables(db)  # leave no live key behind for apps other tests start


# 2. HS256 user tokens


async def test_user_token_names_the_viewer_and_creates_the_user_once(secured_api: Api) -> None:
    assert not await user_exists(secured_api, "ada@example.com")
    assert await viewer_of(secured_api, user_token("ada@example.com")) == "ada@example.com"
    assert await user_exists(secured_api, "ada@example.com")
    user = secured_api.with_headers(**bearer(user_token("ada@example.com")))
    first = await user.ok("{ viewer { id } }")
    assert await user.ok("{ viewer { id } }") == first
    assert (await user.ok("{ users { totalCount } }"))["users"]["totalCount"] == 1
    # A frontend's first page load sends several requests at once: they make one row.
    burst = await asyncio.gather(*(viewer_of(secured_api, user_token("bob")) for _ in range(6)))
    assert burst == ["bob"] * 6
    backend = secured_api.with_headers(**bearer(TEST_API_KEY))
    assert (await backend.ok("{ users { totalCount } }"))["users"]["totalCount"] == 2


async def test_unknown_user_is_refused_when_tokens_do_not_create_users(
    database_url: str, db: Database
) -> None:
    await clear_tables(db)
    async with running(secured_settings(database_url, jwt_create_users=False)) as app, client_of(app) as api:
        assert "newcomer" in await refused(api, VIEWER, **bearer(user_token("newcomer")))
        assert not await user_exists(api, "newcomer")
        backend = api.with_headers(**bearer(TEST_API_KEY))
        await backend.ok('mutation { upsertUser(input: {identifier: "newcomer"}) { id } }')
        assert await viewer_of(api, user_token("newcomer")) == "newcomer"


def _now() -> int:
    return int(time.time())


BAD_TOKENS: dict[str, tuple[Callable[[], str], str]] = {
    "expired": (lambda: user_token("ada", lifetime=-5), "expired"),
    "not-yet-valid": (lambda: user_token("ada", nbf=_now() + 300), "nbf"),
    "without-exp": (lambda: jwt.encode({"sub": "ada"}, TEST_JWT_SECRET, algorithm="HS256"), "exp"),
    "without-sub": (lambda: jwt.encode({"exp": _now() + 60}, TEST_JWT_SECRET, algorithm="HS256"), "sub"),
    "wrong-secret": (lambda: user_token("ada", secret=OTHER_SECRET), "signature"),
    "alg-none": (lambda: unsigned_token(sub="ada", exp=_now() + 60), "'none'"),
    "garbage": (lambda: "not.a.jwt", "nor a valid JWT"),
}


@pytest.mark.parametrize("case", BAD_TOKENS)
async def test_invalid_user_token_is_refused_and_creates_nobody(secured_api: Api, case: str) -> None:
    make_token, mentioned = BAD_TOKENS[case]
    assert mentioned in await refused(secured_api, VIEWER, **bearer(make_token()))
    assert not await user_exists(secured_api, "ada")


async def test_configured_user_claim_names_the_user(database_url: str, db: Database) -> None:
    await clear_tables(db)
    async with running(secured_settings(database_url, jwt_user_claim="email")) as app, client_of(app) as api:
        assert await viewer_of(api, user_token("u-1", email="ada@example.com")) == "ada@example.com"
        assert "email" in await refused(api, VIEWER, **bearer(user_token("u-1")))
        assert not await user_exists(api, "u-1")


async def test_audience_and_issuer_are_required_when_configured(database_url: str, db: Database) -> None:
    await clear_tables(db)
    right: dict[str, Any] = {"aud": "chat-app", "iss": "https://id.example.com"}
    settings = secured_settings(database_url, jwt_audience=right["aud"], jwt_issuer=right["iss"])
    async with running(settings) as app, client_of(app) as api:
        assert await viewer_of(api, user_token("ada", **right)) == "ada"
        assert await viewer_of(api, user_token("ada", **{**right, "aud": ["other", "chat-app"]})) == "ada"
        for claim, wrong in (("aud", "other-app"), ("iss", "https://evil.example.com")):
            await refused(api, VIEWER, **bearer(user_token("ada", **{**right, claim: wrong})))
            missing = {name: value for name, value in right.items() if name != claim}
            assert claim in await refused(api, VIEWER, **bearer(user_token("ada", **missing)))


async def test_leeway_allows_small_clock_skew_only(database_url: str, db: Database) -> None:
    await clear_tables(db)
    async with running(secured_settings(database_url, jwt_leeway_seconds=30)) as app, client_of(app) as api:
        assert await viewer_of(api, user_token("ada", lifetime=-5)) == "ada"
        assert await viewer_of(api, user_token("ada", nbf=_now() + 5)) == "ada"
        assert "expired" in await refused(api, VIEWER, **bearer(user_token("ada", lifetime=-60)))


# 3. RS256 and ES256 tokens from a JWKS


@dataclass
class SigningKey:
    kid: str
    algorithm: str  # "RS256" or "ES256"
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(init=False)

    def __post_init__(self) -> None:
        if self.algorithm == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = dict(RSAAlgorithm.to_jwk(public, as_dict=True))
        else:
            jwk = dict(ECAlgorithm.to_jwk(public, as_dict=True))
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def token(self, identifier: str, kid: str | None = None) -> str:
        claims = {"sub": identifier, "exp": _now() + 3600}
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers={"kid": kid or self.kid})


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 serving `published`, counting the requests it answers."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.requests = 0
        self.failing = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                if server.failing:
                    self.send_error(503)
                    return
                body = json.dumps({"keys": server.published}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self._thread.start()

    def publish(self, *keys: SigningKey) -> None:
        self.published = [*self.published, *(key.jwk() for key in keys)]

    def stop(self) -> None:
        if self._thread.is_alive():
            self.http.shutdown()
            self._thread.join(timeout=5)
        self.http.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def jwks_api(jwks_server: JwksServer, database_url: str, db: Database) -> AsyncIterator[Api]:
    """A gateway taking user tokens from `jwks_server` only (and the backend key)."""
    await clear_tables(db)
    settings = Settings(
        database_url=database_url, auto_migrate=False, api_keys=TEST_API_KEY, jwks_url=jwks_server.url
    )
    async with running(settings) as app, client_of(app) as api:
        yield api


async def test_jwks_tokens_of_both_algorithms_pass_and_the_set_is_cached(
    jwks_server: JwksServer, jwks_api: Api
) -> None:
    rsa_key, ec_key = SigningKey("rsa-1", "RS256"), SigningKey("ec-1", "ES256")
    jwks_server.publish(rsa_key, ec_key)
    for _ in range(3):
        assert await viewer_of(jwks_api, rsa_key.token("ada")) == "ada"
        assert await viewer_of(jwks_api, ec_key.token("bob")) == "bob"
    # A token naming an unknown key right after a fetch does not make the gateway fetch again.
    assert "rsa-9" in await refused(jwks_api, VIEWER, **bearer(rsa_key.token("ada", kid="rsa-9")))
    assert jwks_server.requests == 1


async def test_a_key_published_later_is_fetched_when_a_token_names_it(
    jwks_server: JwksServer, jwks_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, rotated = SigningKey("rsa-1", "RS256"), SigningKey("ec-2", "ES256")
    jwks_server.publish(first)
    assert await viewer_of(jwks_api, first.token("ada")) == "ada"
    jwks_server.publish(rotated)
    # Refetches for unknown key ids are spaced JWKS_MIN_REFRESH_SECONDS apart; skip the wait.
    monkeypatch.setattr("gateway.auth.JWKS_MIN_REFRESH_SECONDS", 0.0)
    assert await viewer_of(jwks_api, rotated.token("bob")) == "bob"
    assert await viewer_of(jwks_api, rotated.token("bob")) == "bob"
    assert await viewer_of(jwks_api, first.token("ada")) == "ada"
    assert jwks_server.requests == 2


async def test_tokens_not_signed_by_a_published_key_are_refused(
    jwks_server: JwksServer, jwks_api: Api
) -> None:
    published = SigningKey("rsa-1", "RS256")
    jwks_server.publish(published)
    assert await viewer_of(jwks_api, published.token("ada")) == "ada"
    impostor = SigningKey("rsa-1", "RS256")  # same key id, another key
    await refused(jwks_api, VIEWER, **bearer(impostor.token("mallory")))
    await refused(jwks_api, VIEWER, **bearer(SigningKey("ec-x", "ES256").token("mallory")))
    assert "HS256" in await refused(jwks_api, VIEWER, **bearer(user_token("mallory")))
    assert not await user_exists(jwks_api, "mallory")


async def test_unreachable_jwks_refuses_tokens_without_failing(
    jwks_server: JwksServer, jwks_api: Api
) -> None:
    jwks_server.stop()
    message = await refused(jwks_api, VIEWER, **bearer(SigningKey("rsa-1", "RS256").token("ada")))
    assert "unreachable" in message
    assert (await jwks_api.with_headers(**bearer(TEST_API_KEY)).ok(THREADS))["threads"]["edges"] == []


async def test_a_failing_jwks_keeps_the_known_keys_and_is_not_fetched_per_request(
    jwks_server: JwksServer, database_url: str, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await clear_tables(db)
    monkeypatch.setattr("gateway.auth.JWKS_MIN_REFRESH_SECONDS", 0.5)
    signing = SigningKey("rsa-1", "RS256")
    jwks_server.publish(signing)
    settings = Settings(database_url=database_url, auto_migrate=False, jwks_url=jwks_server.url)
    async with running(settings.model_copy(update={"jwks_cache_seconds": 0})) as app, client_of(app) as api:
        assert await viewer_of(api, signing.token("ada")) == "ada"
        jwks_server.failing = True  # the provider goes down; every cached key is stale at once
        await asyncio.sleep(0.6)
        for _ in range(5):
            assert await viewer_of(api, signing.token("ada")) == "ada"
        # One failed refetch, then none for JWKS_MIN_REFRESH_SECONDS: no queue of slow fetches.
        assert jwks_server.requests == 2


async def test_an_environment_key_with_dots_is_a_key_not_a_token(database_url: str, db: Database) -> None:
    await clear_tables(db)
    settings = Settings(database_url=database_url, auto_migrate=False, api_keys="backend.key.v2")
    async with running(settings) as app, client_of(app) as api:
        assert (await api.with_headers(**bearer("backend.key.v2")).ok(VIEWER))["viewer"] is None


# 4. Open development mode


async def test_open_mode_answers_loopback_callers_only(api: Api, app: Starlette) -> None:
    assert (await api.ok(UPSERT_THREAD))["upsertThread"]["id"]
    assert len((await api.ok(THREADS))["threads"]["edges"]) == 1
    for host in ("10.1.2.3", "192.168.1.20", "2001:db8::1"):
        async with client_of(app, client_host=host) as remote:
            assert "loopback" in await refused(remote)
            await refused(remote, THREADS, **bearer(TEST_API_KEY))
    # DNS rebinding: a page of evil.example resolved to 127.0.0.1 calls from the developer's browser.
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
        assert "loopback" in await refused(api, THREADS, Host=host)
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert (await api.post(THREADS, Host=host)).status_code == 200


def test_serve_refuses_a_public_address_without_authentication(tmp_path: Path) -> None:
    result = gateway(
        "serve",
        "--host",
        "0.0.0.0",
        cwd=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'open.db'}",
        storage_url=f"file://{tmp_path / 'files'}",
        port=str(_free_port()),
    )
    assert result.returncode == 2, result
    assert "refusing to serve on 0.0.0.0" in result.stderr, result.stderr
    assert "GATEWAY_API_KEYS" in result.stderr and "127.0.0.1" in result.stderr, result.stderr
    assert "GraphiQL at" not in result.stderr and "Traceback" not in result.stderr, result.stderr


async def test_any_authentication_lifts_the_refusal(database_url: str, db: Database) -> None:
    await clear_tables(db)
    public: dict[str, Any] = {"database_url": database_url, "host": "0.0.0.0"}
    with pytest.raises(OpenModeRefused):
        await decide_open_mode(Settings(**public), db)
    configured: list[dict[str, Any]] = [
        {"api_keys": "gw_k"},
        {"jwt_secret": OTHER_SECRET},
        {"jwks_url": "http://x"},
    ]
    for authentication in configured:
        assert await decide_open_mode(Settings(**public, **authentication), db) is False
    assert await decide_open_mode(Settings(database_url=database_url, host="127.0.0.1"), db) is True


# 5. Anonymous callers of the secured gateway


async def test_anonymous_callers_are_refused_but_get_the_ide_and_health(secured_api: Api) -> None:
    assert "credentials required" in await refused(secured_api)
    await refused(secured_api, UPSERT_THREAD)
    backend = secured_api.with_headers(**bearer(TEST_API_KEY))
    assert (await backend.ok(THREADS))["threads"]["edges"] == [], "an anonymous mutation wrote"

    page = await secured_api.http.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "graphiql" in page.text.lower()
    # A GET carrying a query is no IDE page, even when it accepts HTML.
    query = await secured_api.http.get("/graphql", params={"query": THREADS}, headers={"Accept": "text/html"})
    assert query.status_code == 401 and query.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"

    health = await secured_api.http.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
