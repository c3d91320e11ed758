"""GraphiQL, served by the gateway itself: the page and its assets (GraphiQL, React, the explorer
plugin) ship in this package, pinned, with their licences (`assets/*.LICENSE.txt`, versions in
`assets/versions.json`; `python -m gateway.graphiql.refresh` updates them from the npm registry)."""

from html import escape
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
ASSETS_ROUTE = "/graphiql"
AUTH_NOTICE = (
    "This gateway requires a credential: in the Headers tab below, set "
    '{"Authorization": "Bearer <your API key or user token>"}. GraphiQL keeps it in this browser.'
)
# The page loads only its own origin's files: no CDN, and no inline script.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
)
_TEMPLATE = (Path(__file__).parent / "index.html").read_text(encoding="utf-8")


def page(*, auth_required: bool) -> str:
    """The GraphiQL page; when credentials are required it says where to put one."""
    notice = escape(AUTH_NOTICE) if auth_required else ""
    return _TEMPLATE.replace("__AUTH_REQUIRED__", "true" if auth_required else "false").replace(
        "__AUTH_NOTICE__", notice
    )
