"""The `gateway` command: serve, migrate, schema, api-key create/list/revoke, and the operator tools
export, import (a JSONL export, the `llm` CLI's log, Chainlit's DynamoDB table) and prune.

What stops it from starting (a setting with a bad value, an unreachable database, a port in use)
is one line naming the setting or the fix, and exit status 2; GATEWAY_LOG_LEVEL=DEBUG adds the
traceback.
"""

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy.engine import make_url

from gateway.config import Settings
from gateway.observability import configure_logging

if TYPE_CHECKING:
    from gateway.database import Database
    from gateway.storage import ObjectStore
    from gateway.transfer import ImportRun

EXIT_START_FAILED = 2
IMPORT_SOURCES = ("llm", "chainlit-dynamodb")
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


def _retention_days(text: str) -> float:
    """`--older-than`: a number of days above 0 (0 or less would delete every thread)."""
    from gateway.config import MAX_RETENTION_DAYS

    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 0 < days <= MAX_RETENTION_DAYS:  # also refuses nan
        raise argparse.ArgumentTypeError(
            f"{text} days: give a number above 0, at most {MAX_RETENTION_DAYS:,}"
        )
    return days


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
    from gateway.websocket_server import GatewayWebSocketProtocol

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
        "ws_per_message_deflate": settings.ws_per_message_deflate,
        "ws": GatewayWebSocketProtocol,  # subscriptions' events written without the ASGI hops
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


@asynccontextmanager
async def _operator_tools(settings: Settings) -> AsyncIterator[tuple["Database", "ObjectStore"]]:
    """The database (migrated first, unless GATEWAY_AUTO_MIGRATE=false) and the object store, as
    the gateway configured by the same settings uses them."""
    from gateway.database import Database
    from gateway.migrate import upgrade_database
    from gateway.storage import configured_store

    if settings.auto_migrate:
        await upgrade_database(settings.database_url)
    store = configured_store(settings)
    db = Database(settings.database_url)
    try:
        yield db, store
    finally:
        await store.close()
        await db.dispose()


def _timestamp_argument(text: str) -> str:
    from gateway.timestamps import normalize_timestamp

    try:
        return normalize_timestamp(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 timestamp with a zone: {error}"
        ) from None


async def _export_command(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.data.transfer import ThreadSelection
    from gateway.progress import Reporter
    from gateway.transfer import export_jsonl

    selection = ThreadSelection(user_identifier=args.user, since=args.since, until=args.until)
    reporter = Reporter()
    async with _operator_tools(settings) as (db, store):
        with contextlib.ExitStack() as files:
            out = (
                files.enter_context(open(args.output, "wb"))  # noqa: ASYNC230 - written page by page
                if args.output and args.output != "-"
                else sys.stdout.buffer
            )
            with reporter.running():
                result = await export_jsonl(
                    db, store, out, selection=selection, files=args.files, reporter=reporter
                )
    counts = result.counts()
    if args.files is not None:
        counts["element files"] = result.files
    reporter.totals("exported", counts)
    if result.problems:
        reporter.line(f"{result.problems} problem(s), listed above")
    return 1 if result.problems else 0


def _export(settings: Settings, args: argparse.Namespace) -> int:
    result: int = _run_checked(settings, lambda: asyncio.run(_export_command(settings, args)))
    return result


async def _import_command(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.transfer import import_jsonl

    with contextlib.ExitStack() as files:
        if args.source == "-":
            source, size = sys.stdin.buffer, None
        else:
            try:
                source = files.enter_context(open(args.source, "rb"))  # noqa: ASYNC230 - line by line
            except OSError as error:
                print(f"gateway: cannot read {args.source}: {error.strerror}", file=sys.stderr)
                return 1
            size = os.fstat(source.fileno()).st_size
        return await _run_import(
            settings, "imported", lambda run: import_jsonl(run, source, files=args.files, size=size)
        )


async def _run_import(
    settings: Settings, summary: str, load: Callable[["ImportRun"], Awaitable[None]]
) -> int:
    """An import's run: the database and the store, progress while `load` writes through the
    run, then the objects it replaced, the summary and the exit status (1 if anything failed)."""
    from gateway.progress import Reporter
    from gateway.transfer import ImportRun

    reporter = Reporter()
    async with _operator_tools(settings) as (db, store):
        run = ImportRun(db, store, reporter)
        with reporter.running():
            await load(run)
        await _delete_orphaned_objects(run, db, store)
    run.summary(summary)
    return 1 if run.problems else 0


async def _delete_orphaned_objects(run: "ImportRun", db: "Database", store: "ObjectStore") -> None:
    """Objects of elements an import replaced: deleted now, or by a running gateway later."""
    from gateway.reaper import ObjectReaper

    if run.objects_to_delete:
        await ObjectReaper(db, store).drain()


def _import(settings: Settings, args: argparse.Namespace) -> int:
    result: int = _run_checked(settings, lambda: asyncio.run(_import_command(settings, args)))
    return result


async def _prune_command(settings: Settings, args: argparse.Namespace) -> int:
    from gateway import retention
    from gateway.data.transfer import Tally
    from gateway.progress import Reporter
    from gateway.reaper import ObjectReaper

    reporter = Reporter()
    cutoff = retention.cutoff_of(args.older_than)
    whose = f" of {args.user!r}" if args.user else ""
    async with _operator_tools(settings) as (db, store):
        if args.dry_run:
            count = 0
            after: tuple[str, str] | None = None
            while threads := await retention.expired_threads(
                db, cutoff=cutoff, user_identifier=args.user, after=after
            ):
                for thread in threads:
                    owner, name = thread["userIdentifier"] or "-", thread["name"] or ""
                    print(f"{thread['id']}\t{thread['lastActivity']}\t{owner}\t{name}")
                count += len(threads)
                after = (threads[-1]["lastActivity"], threads[-1]["id"])
            reporter.line(f"dry run: {count} thread(s){whose} last active before {cutoff} would be deleted")
            return 0
        deleted = Tally()
        with reporter.running():
            phase = reporter.phase("prune", unit="threads")
            while threads := await retention.prune_batch(
                db, cutoff=cutoff, user_identifier=args.user, store=store.location
            ):
                deleted.created += len(threads)
                phase.advance(len(threads))
            phase.finish()
        waiting = await ObjectReaper(db, store).drain()
    reporter.line(f"deleted {deleted.created} thread(s){whose} last active before {cutoff}")
    if waiting:
        reporter.line(
            f"{waiting} stored object(s) could not be deleted now; they stay in the deletion outbox, and "
            "a running gateway (or the next `gateway prune`) deletes them when the store answers"
        )
    return 0


async def _import_llm_command(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.importers.llm_logs import default_log_path, import_llm_log

    path = Path(args.path) if args.path else default_log_path()
    if not path.is_file():
        print(f"gateway: there is no llm log at {path}", file=sys.stderr)
        return 1
    return await _run_import(settings, f"imported from {path}", lambda run: import_llm_log(run, path))


def _import_llm(settings: Settings, args: argparse.Namespace) -> int:
    result: int = _run_checked(settings, lambda: asyncio.run(_import_llm_command(settings, args)))
    return result


async def _import_dynamodb_command(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.importers.chainlit_dynamodb import DynamoTable, import_chainlit_dynamodb

    source = DynamoTable(
        args.table,
        region=args.region,
        endpoint_url=args.endpoint_url,
        s3_endpoint_url=args.s3_endpoint_url,
        bucket=args.bucket,
    )
    return await _run_import(
        settings,
        f"imported from table {args.table}",
        lambda run: import_chainlit_dynamodb(run, source, copy_objects=args.copy_objects),
    )


def _import_dynamodb(settings: Settings, args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        result: int = _run_checked(settings, lambda: asyncio.run(_import_dynamodb_command(settings, args)))
    except (BotoCoreError, ClientError) as error:
        print(f"gateway: cannot read the DynamoDB table {args.table!r}: {error}", file=sys.stderr)
        return 1
    return result


def _prune(settings: Settings, args: argparse.Namespace) -> int:
    result: int = _run_checked(settings, lambda: asyncio.run(_prune_command(settings, args)))
    return result


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
    export = commands.add_parser(
        "export",
        help="write users and threads (steps, elements, feedback) as JSON Lines",
        description="Write users and threads as JSON Lines (the format is in the README): one thread "
        "a line with its steps, elements and feedback. Progress and a summary go to stderr.",
    )
    export.add_argument("--user", metavar="IDENTIFIER", help="only this user's threads")
    export.add_argument(
        "--since", type=_timestamp_argument, metavar="ISO-8601", help="only threads active at or after"
    )
    export.add_argument(
        "--until", type=_timestamp_argument, metavar="ISO-8601", help="only threads last active before"
    )
    export.add_argument("--output", "-o", metavar="PATH", help="write here instead of stdout")
    export.add_argument("--files", type=Path, metavar="DIR", help="copy the elements' stored bytes into DIR")
    export.set_defaults(run=_export)
    import_ = commands.add_parser(
        "import",
        help="load a `gateway export` (or: `import llm`, `import chainlit-dynamodb`)",
        description="Load a `gateway export` file (or - for stdin). Idempotent: importing the same "
        "file again changes nothing, a newer copy of a thread replaces the stored one; ids and "
        "timestamps are kept. Problems are reported by line number, the rest is imported, and the "
        "exit status is 1. Other sources: `gateway import llm [PATH]`, `gateway import "
        "chainlit-dynamodb --table NAME`.",
    )
    import_.add_argument("source", metavar="PATH", help="a JSONL export, or - for stdin")
    import_.add_argument(
        "--files", type=Path, metavar="DIR", help="store the element files the lines name, from DIR"
    )
    import_.set_defaults(run=_import)
    import_llm = commands.add_parser(
        "import-llm",
        prog="gateway import llm",
        help="(`gateway import llm [PATH]`) load the llm CLI's log",
        description="Load the `llm` CLI's SQLite log: its threads (and conversations of logs "
        "written by versions before 0.36) become threads, each turn a user-message step and an "
        "assistant-message step (tool calls as child steps). Importing a grown log again adds only "
        "what is new. The log is opened read-only.",
    )
    import_llm.add_argument(
        "path", nargs="?", metavar="PATH", help="logs.db (default: llm's own, as `llm logs path` shows)"
    )
    import_llm.set_defaults(run=_import_llm)
    import_dynamodb = commands.add_parser(
        "import-chainlit-dynamodb",
        prog="gateway import chainlit-dynamodb",
        help="(`gateway import chainlit-dynamodb --table NAME`) load Chainlit's DynamoDB table",
        description="Load a table written by Chainlit's DynamoDBDataLayer (users, threads, steps "
        "with their feedback, elements), page by page. AWS credentials come from the standard AWS "
        "variables and files. Elements keep their object keys and URLs; --copy-objects also copies "
        "their S3 objects into the gateway's store.",
    )
    import_dynamodb.add_argument("--table", required=True, help="the table's name")
    import_dynamodb.add_argument("--region", help="its AWS region (default: the AWS configuration's)")
    import_dynamodb.add_argument("--endpoint-url", help="a DynamoDB-compatible endpoint (e.g. local)")
    import_dynamodb.add_argument(
        "--copy-objects", action="store_true", help="copy the elements' S3 objects into the gateway's store"
    )
    import_dynamodb.add_argument(
        "--bucket", help="the bucket of the objects (default: the one in each element's URL)"
    )
    import_dynamodb.add_argument(
        "--s3-endpoint-url", help="the S3 endpoint of the objects (default: --endpoint-url)"
    )
    import_dynamodb.set_defaults(run=_import_dynamodb)
    prune = commands.add_parser(
        "prune",
        help="delete threads not active for DAYS days, with their contents and stored files",
        description="Delete threads whose last activity is older than DAYS days, with their steps, "
        "feedback, elements and stored objects (through the deletion outbox: objects a store "
        "cannot delete now are retried). GATEWAY_RETENTION_DAYS makes a running gateway do this "
        "continuously.",
    )
    prune.add_argument("--older-than", type=_retention_days, required=True, metavar="DAYS")
    prune.add_argument("--user", metavar="IDENTIFIER", help="only this user's threads")
    prune.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    prune.set_defaults(run=_prune)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "import" and argv[1] in IMPORT_SOURCES:
        argv = [f"import-{argv[1]}", *argv[2:]]  # `gateway import llm ...`: the source's own parser
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
