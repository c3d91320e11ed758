"""GraphiQL, as a developer uses it: served by the gateway itself, it renders in a real headless
Chromium that can reach nothing but this machine, fetches the schema once a key is pasted in its
Headers editor, and runs a typed query."""

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.config import Settings
from gateway.graphiql import ASSETS
from gateway.migrate import upgrade_database
from tests.browser import headless_page
from tests.conftest import client_of, running
from tests.test_cli import SERVER_START_TIMEOUT, Server, _env, _free_port, _wait_until_healthy

KEY = "gw_browser-test-key-0123456789abcdefghijklmnop"


@pytest.fixture
def secured_server(tmp_path: Path) -> Iterator[str]:
    """`gateway serve` with an API key configured, as a new user runs it."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"],
        cwd=tmp_path,
        env=_env(
            database_url=f"sqlite:///{tmp_path / 'served.db'}",
            storage_url=f"file://{tmp_path / 'files'}",
            port=str(port),
            api_keys=KEY,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = Server(process)
    base_url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base_url, timeout=10) as client:
            _wait_until_healthy(client, running, SERVER_START_TIMEOUT)
        yield base_url
    finally:
        running.stop()


def test_the_page_references_no_other_host(secured_server: str) -> None:
    page = httpx.get(f"{secured_server}/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "unpkg.com" not in page.text
    sources = [ref for ref in page.text.split('"') if ref.startswith(("http:", "https:", "//"))]
    assert sources == [], sources
    assert "default-src 'self'" in page.headers["content-security-policy"]
    # Every asset is in the package, with the licences of what it bundles.
    versions = json.loads((ASSETS / "versions.json").read_text())
    assert {"graphiql", "react", "react-dom", "@graphiql/plugin-explorer"} <= versions.keys()
    for package in versions.values():
        for name in package["files"]:
            assert (ASSETS / name).is_file(), name
            assert httpx.get(f"{secured_server}/graphiql/{name}").status_code == 200, name


async def test_graphiql_renders_offline_fetches_the_schema_with_a_pasted_key_and_runs_a_query(
    secured_server: str,
) -> None:
    async with headless_page(f"{secured_server}/graphql") as page:
        # The editor renders, and the page says where the key goes.
        await page.wait_for("document.querySelector('.graphiql-query-editor .CodeMirror') !== null")
        notice = await page.evaluate("document.getElementById('gateway-auth-notice').innerText")
        assert "Headers" in notice and "Authorization" in notice, notice

        # The developer pastes the key into the Headers editor (opened, pre-filled) and re-fetches
        # the schema.
        headers_editor = (
            "[...document.querySelectorAll('.CodeMirror')]"
            ".find(e => e.CodeMirror.getValue().includes('Authorization'))"
        )
        await page.wait_for(f"{headers_editor} !== undefined")
        pasted = json.dumps({"Authorization": f"Bearer {KEY}"})
        await page.evaluate(f"{headers_editor}.CodeMirror.setValue({json.dumps(pasted)})")

        def schema_fetched() -> bool:
            return any(
                "IntrospectionQuery" in request["body"] and request["status"] == 200
                for request in page.requests.values()
            )

        # GraphiQL takes the edited headers after a short debounce: re-fetch until they apply.
        for _ in range(30):
            await asyncio.sleep(1)
            if schema_fetched():
                break
            await page.evaluate("document.querySelector('[aria-label=\"Re-fetch GraphQL schema\"]').click()")
        assert schema_fetched(), [(r["method"], r["url"], r["status"]) for r in page.requests.values()]

        # A query typed into the editor returns data.
        await page.evaluate(
            "document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror"
            ".setValue('query Count { threads { totalCount } }')"
        )
        await page.evaluate("document.querySelector('.graphiql-execute-button').click()")
        result = await page.wait_for(
            "(() => { const e = document.querySelector('.graphiql-response .CodeMirror');"
            " const v = e && e.CodeMirror.getValue(); return v && v.includes('totalCount') ? v : ''; })()"
        )
        assert json.loads(result)["data"] == {"threads": {"totalCount": 0}}, result

        # Nothing came from, or went to, anywhere but the gateway.
        elsewhere = [
            request["url"]
            for request in page.requests.values()
            if not request["url"].startswith((secured_server, "data:", "about:"))
        ]
        assert elsewhere == [], elsewhere
        failed = [item for item in page.requests.values() if str(item["status"]).startswith("failed")]
        assert failed == [], failed


async def test_open_mode_s_page_asks_for_no_key_and_graphiql_can_be_turned_off(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'page.db'}"
    await upgrade_database(url)
    async with running(Settings(database_url=url)) as application, client_of(application) as api:
        page = await api.http.get("/graphql", headers={"Accept": "text/html"})
        assert 'data-auth-required="false"' in page.text
        assert "requires a credential" not in page.text
    off = Settings(database_url=url, graphiql=False)
    async with running(off) as application, client_of(application) as api:
        assert (await api.http.get("/graphiql/graphiql.min.js")).status_code == 404
        page = await api.http.get("/graphql", headers={"Accept": "text/html"})
        assert "graphiql" not in page.text.lower()
