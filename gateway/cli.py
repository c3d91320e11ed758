"""The `gateway` command: serve, migrate, schema, and api-key create/list/revoke.

What stops it from starting (a setting with a bad value, an unreachable database, a port in use)
is one line naming the setting or the fix, and exit status 2; GATEWAY_LOG_LEVEL=DEBUG adds the
traceback.
"""

import argparse
import asyncio
import errno
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import make_url

from gateway.config import Settings
from gateway.observability import configure_logging

EXIT_START_FAILED = 2
logger = logging.getLogger("gateway")


class StartFailed(Exception):
    """Why the gateway cannot start, in one line naming the setting or the fix."""


def _settings_problem(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        name = "GATEWAY_" + "_".join(str(part) for part in item["loc"]).upper()
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{name}={item.get('input')!r}: {message}")
    return "; ".join(problems)


def _database_problem(settings: Settings, error: BaseException) -> str | None:
    """One line for a database that cannot be reached or used; None for other errors."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if not isinstance(error, OSError | DBAPIError | InterfaceError | OperationalError | TimeoutError):
        try:
            import asyncpg

            if not isinstance(error, asyncpg.PostgresError | asyncpg.InterfaceError):
                return None
        except ImportError:  # pragma: no cover - asyncpg is a dependency
            return None
    where = make_url(settings.database_url).render_as_string(hide_password=True)
    cause = getattr(error, "orig", None) or error
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"cannot use the database {where} (GATEWAY_DATABASE_URL): {detail}"


def _run_checked(settings: Settings, step: Callable[[], Any]) -> Any:
    """Run a start-up step; a database it cannot use becomes StartFailed (one line)."""
    try:
        return step()
    except Exception as error:
        problem = _database_problem(settings, error)
        if problem is None:
            raise
        if settings.log_level == "DEBUG":
            logger.exception("start-up failed")
        raise StartFailed(problem) from error


def _check_port_free(host: str, port: int) -> None:
    """Fail early, with the setting to change, when another program holds the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise StartFailed(
                    f"port {port} on {host} is in use by another program: stop it, or choose another "
                    "port with GATEWAY_PORT or --port"
                ) from error
            raise StartFailed(f"cannot listen on {host}:{port} (GATEWAY_HOST, --host): {error}") from error


async def _prepared(settings: Settings) -> None:
    """Migrate (unless GATEWAY_AUTO_MIGRATE=false), then refuse open development mode off loopback,
    before the server starts, so the refusal is a message and an exit code, not a server's
    traceback."""
    from gateway.auth import decide_open_mode
    from gateway.database import Database
    from gateway.migrate import upgrade_database

    if settings.auto_migrate:
        await upgrade_database(settings.database_url)
    db = Database(settings.database_url)
    try:
        await decide_open_mode(settings, db)
    finally:
        await db.dispose()


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.auth import OpenModeRefused

    settings = settings.model_copy(
        update={
            "host": args.host or settings.host,
            "port": args.port or settings.port,
            "workers": args.workers or settings.workers,
        }
    )
    _check_port_free(settings.host, settings.port)
    try:
        _run_checked(settings, lambda: asyncio.run(_prepared(settings)))
    except OpenModeRefused as error:
        raise StartFailed(str(error)) from error
    shown_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    where = make_url(settings.database_url).render_as_string(hide_password=True)
    # Logged, not printed: with GATEWAY_LOG_FORMAT=json every line of the server is JSON.
    logger.info("database %s", where)
    if settings.graphiql:
        logger.info("GraphiQL at http://%s:%s/graphql", shown_host, settings.port)
    # Our handler formats every log line (uvicorn's too); the access line is gateway.access's.
    server_options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "log_config": None,
        "access_log": False,
    }
    if settings.workers == 1:
        uvicorn.run(create_app(settings.model_copy(update={"auto_migrate": False})), **server_options)
        return 0
    # Workers are fresh processes that read their settings from the environment: migrated once,
    # above, and listening where this command was told to. Their metrics are summed through files
    # (prometheus-client's multiprocess mode).
    os.environ.update(
        GATEWAY_HOST=settings.host, GATEWAY_PORT=str(settings.port), GATEWAY_AUTO_MIGRATE="false"
    )
    with tempfile.TemporaryDirectory(prefix="gateway-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        logger.info("%s worker processes", settings.workers)
        uvicorn.run("gateway.cli:worker_app", factory=True, workers=settings.workers, **server_options)
    return 0


def worker_app() -> Any:
    """The application of one `--workers` process, configured by the environment."""
    from gateway.app import create_app

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from gateway.migrate import upgrade_database

    before, after = _run_checked(settings, lambda: asyncio.run(upgrade_database(settings.database_url)))
    if before == after:
        print(f"gateway: database already at revision {after}")
    else:
        print(
            f"gateway: database migrated from {before or 'an empty or Chainlit schema'} to revision {after}"
        )
    return 0


def _schema(_settings: Settings, _args: argparse.Namespace) -> int:
    from resolvers.schema import schema

    print(schema.as_str())
    return 0


async def _api_key_command(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.auth import api_key_prefix, hash_api_key, new_api_key
    from gateway.data import api_keys
    from gateway.database import Database
    from gateway.errors import GatewayError
    from gateway.migrate import upgrade_database
    from gateway.timestamps import utc_now

    if settings.auto_migrate:
        await upgrade_database(settings.database_url)
    db = Database(settings.database_url)
    try:
        if args.action == "create":
            key = new_api_key()
            async with db.transaction() as session:
                await api_keys.create_api_key(
                    session,
                    name=args.name,
                    key_hash=hash_api_key(key),
                    prefix=api_key_prefix(key),
                    now=utc_now(),
                )
            print(key)  # alone on stdout, so a script can capture it
            print(
                f"gateway: created API key {args.name!r}. It is shown only this once; only its hash is "
                "stored. (A gateway already running in open development mode needs a restart to require "
                "keys.)",
                file=sys.stderr,
            )
        elif args.action == "list":
            async with db.session() as session:
                keys = await api_keys.list_api_keys(session)
            print(f"{'id':<36} {'name':<24} {'key starts':<12} {'created':<25} revoked")
            for item in keys:
                print(
                    f"{item.id:<36} {item.name:<24} {item.prefix + '...':<12} {item.createdAt:<25} "
                    f"{item.revokedAt or '-'}"
                )
        else:
            async with db.transaction() as session:
                revoked = await api_keys.revoke_api_key(session, name_or_id=args.name, now=utc_now())
            print(f"gateway: revoked API key {revoked.name!r} ({revoked.prefix}...)", file=sys.stderr)
    except GatewayError as error:
        print(f"gateway: {error.message}", file=sys.stderr)
        return 1
    finally:
        await db.dispose()
    return 0


def _api_key(settings: Settings, args: argparse.Namespace) -> int:
    result: int = _run_checked(settings, lambda: asyncio.run(_api_key_command(settings, args)))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="GraphQL persistence gateway for chat apps.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('conversation-gateway')}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the gateway (migrates the database first, unless GATEWAY_AUTO_MIGRATE=false)",
        description="Run the gateway: GraphQL and GraphiQL at /graphql, liveness at /healthz, readiness "
        "at /readyz, metrics at /metrics. Pending migrations are applied first, once, unless "
        "GATEWAY_AUTO_MIGRATE=false. Every setting is a GATEWAY_* variable (see the README).",
    )
    serve.add_argument("--host", help="address to bind (default GATEWAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default GATEWAY_PORT or 8000)")
    serve.add_argument(
        "--workers", type=int, help="server processes on the port (default GATEWAY_WORKERS or 1)"
    )
    serve.set_defaults(run=_serve)
    migrate = commands.add_parser("migrate", help="create or upgrade the schema (also a Chainlit database)")
    migrate.set_defaults(run=_migrate)
    schema = commands.add_parser("schema", help="print the GraphQL SDL (the content of schema.graphql)")
    schema.set_defaults(run=_schema)
    api_key = commands.add_parser("api-key", help="create, list and revoke backends' API keys")
    actions = api_key.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--name", required=True, help="what the key is for, e.g. chat-backend")
    actions.add_parser("list", help="list keys: id, name, first characters, created, revoked")
    revoke = actions.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("name", help="the live key's name, or a key's id")
    api_key.set_defaults(run=_api_key)
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as error:
        print(f"gateway: cannot start: {_settings_problem(error)}", file=sys.stderr)
        return EXIT_START_FAILED
    configure_logging(settings.log_level, settings.log_format)
    try:
        return int(args.run(settings, args))
    except StartFailed as error:
        print(f"gateway: cannot start: {error}", file=sys.stderr)
        return EXIT_START_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
