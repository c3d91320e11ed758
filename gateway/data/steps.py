"""Steps: a thread's steps page by page (many threads in one statement), partial upserts that are
safe against concurrent writers, streamed output, and deletion of a step with its descendants."""

import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.data.access import Access, check_writable_thread, not_yours, require_writable_thread
from gateway.data.common import (
    KEEP,
    Keep,
    changed,
    dialect_insert,
    dialect_name,
    given,
    metadata_patch_to_new,
    update_values,
)
from gateway.data.pagination import (
    Ordering,
    Page,
    PageRequest,
    count_by_parent,
    count_rows,
    fetch_page,
    fetch_pages_by_parent,
)
from gateway.data.threads import ensure_thread, insert_missing_threads, new_thread_row
from gateway.errors import BadUserInput, Conflict, GatewayError, NotFound
from gateway.jsonops import sql_json_contains, sql_json_merge
from gateway.tables import Step, elements_table, feedbacks_table, steps_table, threads_table

STEP_ORDER = Ordering("steps:createdAt", (steps_table.c.createdAt, steps_table.c.id))
FAVORITE_ORDER = Ordering("favorites:createdAt:desc", (steps_table.c.createdAt, steps_table.c.id), True)


@dataclass(frozen=True)
class StepFilter:
    types: tuple[str, ...] = ()
    root_only: bool = False


@dataclass
class StepChanges:
    """What an upsert sets; `KEEP` leaves the stored value alone. `metadata` is a patch."""

    name: str | Keep = KEEP
    type: str | Keep = KEEP
    parentId: str | Keep | None = KEEP
    input: str | Keep | None = KEEP
    output: str | Keep | None = KEEP
    isError: bool | Keep | None = KEEP
    streaming: bool | Keep = KEEP
    waitForAnswer: bool | Keep | None = KEEP
    showInput: str | Keep | None = KEEP
    language: str | Keep | None = KEEP
    command: str | Keep | None = KEEP
    modes: Any | Keep = KEEP
    defaultOpen: bool | Keep | None = KEEP
    autoCollapse: bool | Keep | None = KEEP
    tags: list[str] | Keep | None = KEEP
    metadata: dict[str, Any] | Keep = KEEP
    generation: dict[str, Any] | Keep | None = KEEP
    createdAt: str | Keep = KEEP
    start: str | Keep | None = KEEP
    end: str | Keep | None = KEEP


# A step created by an update that arrived before its create still satisfies Chainlit's NOT NULLs.
NEW_STEP_DEFAULTS = {"name": "", "type": "undefined", "streaming": False}


def step_filter_conditions(step_filter: StepFilter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if step_filter.types:
        conditions.append(steps_table.c.type.in_(step_filter.types))
    if step_filter.root_only:
        conditions.append(steps_table.c.parentId.is_(None))
    return conditions


async def get_steps_by_ids(session: AsyncSession, *, ids: Sequence[str], access: Access) -> dict[str, Step]:
    statement = sa.select(Step).where(steps_table.c.id.in_(list(ids)), *access.readable_steps())
    return {row.id: row for row in (await session.execute(statement)).scalars()}


async def list_steps_of_threads(
    session: AsyncSession, *, thread_ids: Sequence[str], request: PageRequest, step_filter: StepFilter
) -> dict[str, Page[Step]]:
    """Each thread's steps, oldest first, one page per thread, in one statement."""
    return await fetch_pages_by_parent(
        session,
        model=Step,
        parent_column=steps_table.c.threadId,
        parent_ids=thread_ids,
        ordering=STEP_ORDER,
        request=request,
        where=step_filter_conditions(step_filter),
    )


async def count_steps_of_threads(
    session: AsyncSession, *, thread_ids: Sequence[str], step_filter: StepFilter
) -> dict[str, int]:
    return await count_by_parent(
        session,
        parent_column=steps_table.c.threadId,
        parent_ids=thread_ids,
        where=step_filter_conditions(step_filter),
    )


# A child may sit in another thread than its parent (parentId is not checked on write), so children
# are filtered by the caller's access, unlike a thread's steps, which share their visible thread.


async def list_children_of_steps(
    session: AsyncSession, *, parent_ids: Sequence[str], request: PageRequest, access: Access
) -> dict[str, Page[Step]]:
    return await fetch_pages_by_parent(
        session,
        model=Step,
        parent_column=steps_table.c.parentId,
        parent_ids=parent_ids,
        ordering=STEP_ORDER,
        request=request,
        where=access.readable_steps(),
    )


async def count_children_of_steps(
    session: AsyncSession, *, parent_ids: Sequence[str], access: Access
) -> dict[str, int]:
    return await count_by_parent(
        session, parent_column=steps_table.c.parentId, parent_ids=parent_ids, where=access.readable_steps()
    )


def _favorite_conditions(user_id: str | None, access: Access) -> list[sa.ColumnElement[bool]]:
    conditions = [sql_json_contains(steps_table.c.metadata, {"favorite": True}), *access.owned_steps()]
    if user_id is not None:
        owned = sa.select(threads_table.c.id).where(threads_table.c.userId == user_id)
        conditions.append(steps_table.c.threadId.in_(owned.scalar_subquery()))
    return conditions


async def list_favorite_steps(
    session: AsyncSession, *, user_id: str | None, request: PageRequest, access: Access
) -> Page[Step]:
    """Steps whose `metadata.favorite` is true (Chainlit's favorites), newest first; a user's own."""
    return await fetch_page(
        session,
        model=Step,
        ordering=FAVORITE_ORDER,
        request=request,
        where=_favorite_conditions(user_id, access),
    )


async def count_favorite_steps(session: AsyncSession, *, user_id: str | None, access: Access) -> int:
    return await count_rows(session, model=Step, where=_favorite_conditions(user_id, access))


StepRow = sa.Row[Any]
"""A step as a write returned it (RETURNING): its columns by their SQL names."""


@dataclass(frozen=True)
class StepWrite:
    """One upsert of a batch, as `upsert_step` takes it; `now` is its createdAt if it is new."""

    step_id: str
    thread_id: str | None
    changes: StepChanges
    now: str


def _require_writable_step(
    access: Access,
    *,
    thread_id: str,
    thread_found: bool,
    owner_id: str | None,
    metadata: Any,
    missing: NotFound,
) -> None:
    """Refuse a write to a step (of `thread_id`) the caller may not change: `missing` when the caller
    cannot see it (the same answer as for no step at all, so ids cannot be probed); FORBIDDEN in a
    thread shared read-only. A user sees a step only through its thread."""
    if access.everything:
        return
    if not thread_found:
        raise missing
    check_writable_thread(access, thread_id=thread_id, owner_id=owner_id, metadata=metadata, missing=missing)


async def _writable_step(session: AsyncSession, *, step_id: str, access: Access, missing: NotFound) -> str:
    """The thread of the step, if the caller may change the step (one statement); see
    `_require_writable_step`."""
    statement = (
        sa.select(
            steps_table.c.threadId,
            threads_table.c.id.label("thread_found"),
            threads_table.c.userId,
            threads_table.c.metadata,
        )
        .select_from(steps_table.outerjoin(threads_table, threads_table.c.id == steps_table.c.threadId))
        .where(steps_table.c.id == step_id)
    )
    found = (await session.execute(statement)).first()
    if found is None:
        raise missing
    _require_writable_step(
        access,
        thread_id=found.threadId,
        thread_found=found.thread_found is not None,
        owner_id=found.userId,
        metadata=found.metadata,
        missing=missing,
    )
    return str(found.threadId)


def _missing_step(step_id: str) -> NotFound:
    return NotFound(f"step {step_id} does not exist", field="id")


def _not_created(step_id: str) -> NotFound:
    return NotFound(f"step {step_id} does not exist; give its threadId to create it", field="id")


def _other_thread(step_id: str, stored_thread: str, thread_id: str | None) -> Conflict:
    return Conflict(f"step {step_id} belongs to thread {stored_thread}, not {thread_id}", field="threadId")


def _own_parent(step_id: str, fields: dict[str, Any]) -> BadUserInput | None:
    if fields.get("parentId") == step_id:
        return BadUserInput("a step cannot be its own parent", field="parentId")
    return None


@dataclass(frozen=True)
class _ThreadSeen:
    """An existing thread, as far as a user's write needs it."""

    owner_id: str | None
    metadata: Any


def _check_user_step_write(
    access: Access,
    *,
    step_id: str,
    thread_id: str | None,
    parent_id: str | None,
    step_thread: str | None,
    threads: Mapping[str, _ThreadSeen],
    parent_thread: str | None,
) -> bool:
    """A user writes steps only in threads of their own (a missing thread is created theirs), and
    nests them only under steps of the same thread. Decided on what was loaded: the step's thread
    (`step_thread`, None: no such step), the existing threads among the step's and the one named,
    the parent's thread. Returns whether the thread named is still to be created."""
    to_create = False
    if step_thread is not None:
        seen = threads.get(step_thread)
        _require_writable_step(
            access,
            thread_id=step_thread,
            thread_found=seen is not None,
            owner_id=seen.owner_id if seen else None,
            metadata=seen.metadata if seen else None,
            missing=_not_created(step_id) if thread_id is None else not_yours("step", step_id),
        )
        if thread_id is not None and step_thread != thread_id:
            # Told before `thread_id` is looked at: the answer says nothing of that thread.
            raise _other_thread(step_id, step_thread, thread_id)
        thread_id = step_thread
    elif thread_id is not None:
        if (seen := threads.get(thread_id)) is None:
            to_create = True
        else:
            check_writable_thread(
                access,
                thread_id=thread_id,
                owner_id=seen.owner_id,
                metadata=seen.metadata,
                missing=not_yours("thread", thread_id, "threadId"),
            )
    if parent_id is not None and (parent_thread is None or parent_thread != thread_id):
        # The parent must already be in the step's own thread: a user cannot hang steps under
        # (and so into the view of) another user's conversation, nor learn whether an id exists.
        raise BadUserInput(f"parentId {parent_id} is not a step of this step's thread", field="parentId")
    return to_create


@functools.cache
def _user_write_check(thread_given: bool, parent_given: bool) -> Any:
    """The step `step_id` with its thread, the thread `thread_id`, the step `parent_id` (parameters),
    each NULL when missing, in one row. Built once per shape."""
    step, step_thread = steps_table.alias("step"), threads_table.alias("step_thread")
    thread, parent = threads_table.alias("thread"), steps_table.alias("parent")

    def matches(column: sa.ColumnElement[Any], name: str, given: bool) -> sa.ColumnElement[bool]:
        return column == sa.bindparam(name, type_=column.type) if given else sa.false()

    one = sa.select(sa.literal(1).label("one")).subquery("one")
    return sa.select(
        step.c.threadId.label("step_thread"),
        step_thread.c.id.label("step_thread_found"),
        step_thread.c.userId.label("step_owner"),
        step_thread.c.metadata.label("step_thread_metadata"),
        thread.c.id.label("thread_found"),
        thread.c.userId.label("thread_owner"),
        thread.c.metadata.label("thread_metadata"),
        parent.c.threadId.label("parent_thread"),
    ).select_from(
        one.outerjoin(step, matches(step.c.id, "step_id", True))
        .outerjoin(step_thread, step_thread.c.id == step.c.threadId)
        .outerjoin(thread, matches(thread.c.id, "thread_id", thread_given))
        .outerjoin(parent, matches(parent.c.id, "parent_id", parent_given))
    )


async def _load_and_check_user_step_write(
    session: AsyncSession, *, step_id: str, thread_id: str | None, parent_id: str | None, access: Access
) -> bool:
    """`_check_user_step_write` on the step, its thread, the thread named and the parent, loaded by
    one statement."""
    statement = _user_write_check(thread_id is not None, parent_id is not None)
    parameters = {"step_id": step_id, "thread_id": thread_id, "parent_id": parent_id}
    found = (await session.execute(statement, parameters)).one()
    threads: dict[str, _ThreadSeen] = {}
    if found.step_thread_found is not None:
        threads[found.step_thread] = _ThreadSeen(found.step_owner, found.step_thread_metadata)
    if found.thread_found is not None and thread_id is not None:
        threads[thread_id] = _ThreadSeen(found.thread_owner, found.thread_metadata)
    return _check_user_step_write(
        access,
        step_id=step_id,
        thread_id=thread_id,
        parent_id=parent_id,
        step_thread=found.step_thread,
        threads=threads,
        parent_thread=found.parent_thread,
    )


def _deleted_keys(fields: dict[str, Any]) -> tuple[str, ...]:
    """The metadata keys a patch deletes (its null values)."""
    return tuple(sorted(key for key, value in fields.get("metadata", {}).items() if value is None))


@functools.lru_cache(maxsize=512)
def _upsert(
    dialect: str, fields: tuple[str, ...], deleted_keys: tuple[str, ...], new_thread: bool = False
) -> Any:
    """INSERT .. ON CONFLICT DO UPDATE of `fields` taken from the row proposed (`excluded`), so one
    statement serves one row or many (the rows come as parameters). Only a real change updates (and
    so fires the trigger that moves the thread's `updatedAt`); rows of another thread are never
    touched. Either way RETURNING leaves the row out, for the caller to tell the cases apart.

    `new_thread` (PostgreSQL): the same statement also creates the row's thread if missing, from
    the `_new_thread_parameters` (unless the step, `new_thread_step_id`, is in another thread), and
    returns `thread_created`, whether it did. Built once per shape, so SQLAlchemy finds it compiled
    at once."""
    statement = dialect_insert(dialect, steps_table)
    excluded = statement.excluded
    set_: dict[str, Any] = {}
    for name in fields:
        if name == "metadata":
            # The proposed row holds the patch without its nulls (a new step's metadata); the keys
            # the nulls delete are the same for every row of the statement.
            current: Any = steps_table.c.metadata
            if deleted_keys:
                current = sql_json_merge(current, dict.fromkeys(deleted_keys))
            set_[name] = sql_json_merge(current, excluded.metadata)
        else:
            set_[name] = excluded[name]
    if set_:
        statement = statement.on_conflict_do_update(
            index_elements=[steps_table.c.id],
            set_=set_,
            where=sa.and_(steps_table.c.threadId == excluded.threadId, changed(steps_table, set_)),
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=[steps_table.c.id])
    if new_thread:
        # INSERT .. SELECT of parameters: an INSERT .. VALUES in the WITH would take the step's
        # parameters for the thread's columns of the same names.
        parameters = [
            sa.bindparam(f"new_thread_{name}", type_=threads_table.c[name].type)
            for name in NEW_THREAD_COLUMNS
        ]
        # Not when the step is in another thread: the write is refused then, and (a backend's
        # write being its own transaction) a thread made for it would stay. Only a concurrent
        # create of the same step id in another thread can still leave that thread, empty.
        in_other_thread = sa.select(steps_table.c.id).where(
            steps_table.c.id == sa.bindparam("new_thread_step_id", type_=steps_table.c.id.type),
            steps_table.c.threadId != parameters[0],
        )
        thread = dialect_insert(dialect, threads_table).from_select(
            NEW_THREAD_COLUMNS, sa.select(*parameters).where(~in_other_thread.exists())
        )
        new_thread_cte = (
            thread.on_conflict_do_nothing(index_elements=[threads_table.c.id])
            .returning(threads_table.c.id)
            .cte("new_thread")
        )
        made = sa.exists(sa.select(new_thread_cte.c.id)).label("thread_created")
        return statement.add_cte(new_thread_cte).returning(*steps_table.c, made)
    return statement.returning(*steps_table.c)


NEW_THREAD_COLUMNS = ("id", "createdAt", "updatedAt", "userId", "userIdentifier")


def _new_thread_parameters(thread_id: str, access: Access, now: str) -> dict[str, Any]:
    row = new_thread_row(thread_id, access, now)
    return {f"new_thread_{name}": row[name] for name in NEW_THREAD_COLUMNS}


def _new_row(step_id: str, thread_id: str, fields: dict[str, Any], now: str) -> dict[str, Any]:
    row = {**NEW_STEP_DEFAULTS, "createdAt": now, **fields, "id": step_id, "threadId": thread_id}
    if "metadata" in fields:
        row["metadata"] = metadata_patch_to_new(fields["metadata"])
    return row


async def upsert_step(
    session: AsyncSession,
    *,
    step_id: str,
    thread_id: str | None,
    changes: StepChanges,
    access: Access,
    now: str,
) -> StepRow:
    """Create the step, or change only the fields given, atomically (`INSERT .. ON CONFLICT`), so an
    update racing the create of the same step loses nothing. With a `threadId`, a missing thread is
    created. A database trigger moves the thread's `updatedAt` when the step row really changes.

    A backend's write is one statement on PostgreSQL (the thread is inserted in a CTE), and on
    SQLite one while the thread exists (two more the first time); a user's is one check and the
    write (and, on SQLite, the new thread's insert). Only a
    step that changed nothing, or belongs to another thread, costs one statement more."""
    fields = given(changes)
    if (own_parent := _own_parent(step_id, fields)) is not None:
        raise own_parent
    create_thread = thread_id is not None
    if not access.everything:
        create_thread = await _load_and_check_user_step_write(
            session, step_id=step_id, thread_id=thread_id, parent_id=fields.get("parentId"), access=access
        )
    if thread_id is None:
        row = await _update_step(session, step_id=step_id, fields=fields)
    else:
        dialect, parameters = dialect_name(session), _new_row(step_id, thread_id, fields, now)
        in_one = create_thread and dialect == "postgresql"
        if in_one:
            parameters.update(_new_thread_parameters(thread_id, access, now), new_thread_step_id=step_id)
        elif create_thread and not access.everything:  # the user's check found it missing
            await ensure_thread(session, thread_id=thread_id, access=access, now=now)
        statement = _upsert(dialect, tuple(fields), _deleted_keys(fields), in_one)
        if create_thread and not in_one and access.everything:
            # SQLite runs no INSERT inside WITH. Most steps go to a thread that exists: the thread
            # is inserted only once the step's foreign key finds it missing (SQLite undoes just
            # the failed statement), not by a statement before every step.
            try:
                row = (await session.execute(statement, parameters)).one_or_none()
            except IntegrityError as error:
                if "FOREIGN KEY" not in str(error.orig):
                    raise
                await ensure_thread(session, thread_id=thread_id, access=access, now=now)
                row = (await session.execute(statement, parameters)).one_or_none()
        else:
            row = (await session.execute(statement, parameters)).one_or_none()
        if in_one and not access.everything and row is not None and not row.thread_created:
            # Someone made the thread the check found missing: the step must not land in it. (On
            # SQLite no writer comes between: the transaction holds the write lock from its start.)
            raise Conflict("a concurrent write to the same rows won; retry the request", retryable=True)
    if row is not None:
        return row
    row = await _existing_step(session, step_id)
    if thread_id is not None and row.threadId != thread_id:
        # If someone else made it since the check above, a user is told nothing of it.
        await require_writable_thread(
            session, access=access, thread_id=row.threadId, missing=not_yours("step", step_id)
        )
        raise _other_thread(step_id, row.threadId, thread_id)
    return row


async def _update_step(session: AsyncSession, *, step_id: str, fields: dict[str, Any]) -> StepRow | None:
    """Change the fields of an existing step (a write without threadId never creates one)."""
    set_ = update_values(steps_table, fields)
    if not set_:
        return None
    statement = (
        sa.update(steps_table)
        .where(steps_table.c.id == step_id, changed(steps_table, set_))
        .values(set_)
        .returning(*steps_table.c)
    )
    return (await session.execute(statement)).one_or_none()


async def _existing_step(session: AsyncSession, step_id: str) -> StepRow:
    row = (await session.execute(sa.select(*steps_table.c).where(steps_table.c.id == step_id))).one_or_none()
    if row is None:
        raise _not_created(step_id)
    return row


@dataclass
class _Replay:
    """A batch's writes replayed in order on what the database held when the batch began (loaded
    up front) and what the batch's earlier writes made: each write's thread, or why it fails,
    decided before anything is written."""

    access: Access
    steps: dict[str, str]  # step id: its thread
    threads: dict[str, _ThreadSeen]  # for a user's batch, the threads the checks look at
    new_threads: dict[str, str] = field(default_factory=dict)  # thread id: createdAt, if missing
    users_new_threads: set[str] = field(default_factory=set)  # a user's writes make these

    @classmethod
    async def load(
        cls,
        session: AsyncSession,
        *,
        writes: Sequence[StepWrite],
        fields_of: list[dict[str, Any]],
        access: Access,
    ) -> "_Replay":
        ids = {write.step_id for write in writes}
        if not access.everything:
            ids |= {fields["parentId"] for fields in fields_of if fields.get("parentId")}
        lookup = (
            sa.select(steps_table.c.id, steps_table.c.threadId)
            .where(steps_table.c.id.in_(sorted(ids)))
            .order_by(steps_table.c.id)
            # Neither deleted nor moved until commit: a write without threadId updates, never creates.
            .with_for_update(read=True, key_share=True)
        )
        steps = {row.id: row.threadId for row in await session.execute(lookup)}
        threads: dict[str, _ThreadSeen] = {}
        if not access.everything:
            thread_ids = {write.thread_id for write in writes if write.thread_id} | set(steps.values())
            columns = (threads_table.c.id, threads_table.c.userId, threads_table.c.metadata)
            seen = sa.select(*columns).where(threads_table.c.id.in_(sorted(thread_ids)))
            threads = {row.id: _ThreadSeen(row.userId, row.metadata) for row in await session.execute(seen)}
        return cls(access, steps, threads)

    def thread_of(self, write: StepWrite, fields: dict[str, Any]) -> str:
        """The thread the write goes to (noting what it makes), or its error raised."""
        if (own_parent := _own_parent(write.step_id, fields)) is not None:
            raise own_parent
        stored = self.steps.get(write.step_id)
        if not self.access.everything:
            parent_id = fields.get("parentId")
            creates = _check_user_step_write(
                self.access,
                step_id=write.step_id,
                thread_id=write.thread_id,
                parent_id=parent_id,
                step_thread=stored,
                threads=self.threads,
                parent_thread=self.steps.get(parent_id) if parent_id else None,
            )
            if creates and write.thread_id is not None:
                self.threads[write.thread_id] = _ThreadSeen(self.access.user_id, None)
                self.users_new_threads.add(write.thread_id)
        if write.thread_id is None:
            if stored is None:
                raise _not_created(write.step_id)
            return stored
        if stored is not None and stored != write.thread_id:
            raise _other_thread(write.step_id, stored, write.thread_id)
        self.new_threads.setdefault(write.thread_id, write.now)
        self.steps[write.step_id] = write.thread_id
        return write.thread_id


async def ingest_steps(
    session: AsyncSession,
    *,
    writes: Sequence[StepWrite],
    access: Access,
    written_threads: Collection[str] = (),
) -> list[StepRow | GatewayError]:
    """Upsert each step on its own: one outcome per write, in order (the step, or why it was not
    written, as `upsert_step` would tell); a failing write changes nothing, the others land, and a
    write repeating an id applies on top of the earlier one.

    The statements are bounded by the batch's shape, not its length: where its steps are (and, for a
    user, the threads the access checks look at), the threads named created if missing, then one
    multi-row upsert per round (an id's second write goes in the second round) and set of fields
    given, each followed, only when RETURNING left rows out (unchanged, or of another thread), by
    one read of them."""
    outcomes: list[StepRow | GatewayError | None] = [None] * len(writes)
    fields_of = [given(write.changes) for write in writes]
    replay = await _Replay.load(session, writes=writes, fields_of=fields_of, access=access)
    thread_of: dict[int, str] = {}
    rounds: list[dict[tuple[tuple[str, ...], tuple[str, ...]], list[int]]] = []
    repeats: dict[str, int] = {}
    for index, write in enumerate(writes):
        try:
            thread_of[index] = replay.thread_of(write, fields_of[index])
        except GatewayError as error:
            outcomes[index] = error
            continue
        round_ = repeats.get(write.step_id, 0)
        repeats[write.step_id] = round_ + 1
        if round_ == len(rounds):
            rounds.append({})
        rounds[round_].setdefault((tuple(fields_of[index]), _deleted_keys(fields_of[index])), []).append(
            index
        )
    dialect = dialect_name(session)
    created: set[str] = set()
    new_threads = sorted(item for item in replay.new_threads.items() if item[0] not in written_threads)
    if new_threads:
        # Rows in id order, as every batch writes them, so that batches sharing rows do not deadlock.
        rows = [new_thread_row(thread_id, access, now) for thread_id, now in new_threads]
        statement = insert_missing_threads(dialect).returning(threads_table.c.id)
        created = set((await session.execute(statement, rows)).scalars())
    if not replay.users_new_threads <= created:
        # Someone made one of the user's new threads since the batch looked: its writes were
        # decided on a thread that is not theirs.
        raise Conflict("a concurrent write to the same rows won; retry the request", retryable=True)
    for groups in rounds:
        unanswered: list[int] = []
        for (names, deleted_keys), indexes in groups.items():
            rows = [
                _new_row(writes[index].step_id, thread_of[index], fields_of[index], writes[index].now)
                for index in sorted(indexes, key=lambda index: writes[index].step_id)
            ]
            written = await session.execute(_upsert(dialect, names, deleted_keys), rows)
            returned = {row.id: row for row in written}
            for index in indexes:
                outcomes[index] = returned.get(writes[index].step_id)
                if outcomes[index] is None:
                    unanswered.append(index)
        if unanswered:
            ids = sorted({writes[index].step_id for index in unanswered})
            current = {row.id: row for row in await session.execute(_steps_by_ids(), {"ids": ids})}
            for index in unanswered:
                write, row = writes[index], current.get(writes[index].step_id)
                if row is None:  # pragma: no cover - locked, or just written
                    outcomes[index] = _not_created(write.step_id)
                elif row.threadId != thread_of[index]:
                    # Created since the batch looked, in another thread: a user is told nothing.
                    outcomes[index] = (
                        _other_thread(write.step_id, row.threadId, write.thread_id)
                        if access.everything
                        else not_yours("step", write.step_id)
                    )
                else:
                    outcomes[index] = row
    # A thread created only for writes that failed goes with them, as if each had its savepoint.
    unused = created - {outcome.threadId for outcome in outcomes if isinstance(outcome, sa.Row)}
    if unused:
        await session.execute(sa.delete(threads_table).where(threads_table.c.id.in_(sorted(unused))))
    return [
        outcome if outcome is not None else _not_created(write.step_id)
        for outcome, write in zip(outcomes, writes, strict=True)
    ]


@functools.cache
def _steps_by_ids() -> Any:
    ids = sa.bindparam("ids", expanding=True, type_=steps_table.c.id.type)
    return sa.select(*steps_table.c).where(steps_table.c.id.in_(ids))


@functools.cache
def _append_output() -> Any:
    """UPDATE appending `delta` to the step `step_id`'s output (parameters): built once."""
    step_id = sa.bindparam("step_id", type_=steps_table.c.id.type)
    delta = sa.bindparam("delta", type_=sa.Text())
    return (
        sa.update(steps_table)
        .where(steps_table.c.id == step_id)
        .values(output=sa.func.coalesce(steps_table.c.output, "") + delta)
        .returning(*steps_table.c)
    )


async def append_step_output(session: AsyncSession, *, step_id: str, delta: str, access: Access) -> StepRow:
    """Append streamed tokens in the database itself, so concurrent appends all land. One statement
    (a user's access is a condition of it); only a refusal costs one more, to tell why."""
    statement = _append_output()
    if not access.everything:
        statement = statement.where(*access.writable_steps())
    row = (await session.execute(statement, {"step_id": step_id, "delta": delta})).one_or_none()
    if row is None:
        await _writable_step(session, step_id=step_id, access=access, missing=_missing_step(step_id))
        raise _missing_step(step_id)
    return row


async def delete_step(session: AsyncSession, *, step_id: str, access: Access) -> list[str]:
    """Delete the step, its descendants, and their feedback and elements; returns object keys."""
    thread_id = await _writable_step(session, step_id=step_id, access=access, missing=_missing_step(step_id))
    roots = sa.select(steps_table.c.id).where(steps_table.c.id == step_id)
    return await _delete_step_trees(session, thread_id=thread_id, roots=roots)


async def delete_steps_of_thread(
    session: AsyncSession, *, thread_id: str, step_ids: Sequence[str], access: Access
) -> tuple[list[str], list[str]]:
    """Delete those of `step_ids` that are steps of the thread, with their descendants and their
    feedback and elements; ids of no step of the thread are passed over (already deleted, so a
    retried batch deletes nothing more), as are steps the caller may not write (a user's access
    rides in the statement that finds them). Returns (the ids named that were deleted, object keys)."""
    if not step_ids:
        return [], []
    named = sa.select(steps_table.c.id).where(
        steps_table.c.id.in_(sorted(set(step_ids))),
        steps_table.c.threadId == thread_id,
        *access.writable_steps(),
    )
    deleted = sorted((await session.execute(named)).scalars())
    if not deleted:
        return [], []
    return deleted, await _delete_step_trees(session, thread_id=thread_id, roots=named)


async def _delete_step_trees(
    session: AsyncSession, *, thread_id: str, roots: sa.Select[tuple[str]]
) -> list[str]:
    """Delete the steps `roots` selects (steps of the thread) with their descendants, and their
    feedback and elements: one statement per table. Returns the elements' stored objects' keys."""
    tree = roots.cte("subtree", recursive=True)
    tree = tree.union(
        sa.select(steps_table.c.id).where(
            steps_table.c.parentId == tree.c.id, steps_table.c.threadId == thread_id
        )
    )
    in_tree = sa.select(tree.c.id)
    await session.execute(sa.delete(feedbacks_table).where(feedbacks_table.c.forId.in_(in_tree)))
    removed = sa.delete(elements_table).where(elements_table.c.forId.in_(in_tree))
    object_keys = list((await session.execute(removed.returning(elements_table.c.objectKey))).scalars())
    await session.execute(sa.delete(steps_table).where(steps_table.c.id.in_(in_tree)))
    return [key for key in object_keys if key]
