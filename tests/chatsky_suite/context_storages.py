# Chatsky's context-storage tests (tests/context_storages/test_dbs.py of Chatsky v0.10.0,
# https://github.com/deeppavlov/chatsky, Apache License 2.0, copyright the Chatsky authors), run
# against gateway.chatsky.GatewayContextStorage: only the storage parameters and the fixture that
# makes the storage are changed (see README.md here). GATEWAY_CHATSKY_URL names the gateway.
import asyncio
import os
import random
from typing import Awaitable, Callable, Optional

import pytest

from chatsky import Pipeline
from chatsky.context_storages import DBContextStorage
from chatsky.context_storages.database import _SUBSCRIPT_TYPE
from chatsky.core.ctx_utils import ContextMainInfo
from chatsky.utils.testing import HAPPY_PATH, TOY_SCRIPT_KWARGS, check_happy_path

from gateway.chatsky import GatewayContextStorage

AddContextType = Callable[[DBContextStorage, str, ContextMainInfo], Awaitable[None]]


@pytest.mark.parametrize(
    "db_kwargs,db_teardown",
    [pytest.param({"path": os.environ.get("GATEWAY_CHATSKY_URL", "")}, None, id="gateway")],
)
class TestContextStorages:
    @pytest.fixture
    async def db(self, db_kwargs, db_teardown):
        context_storage = GatewayContextStorage(
            db_kwargs["path"], api_key=os.environ.get("GATEWAY_CHATSKY_API_KEY")
        )
        await context_storage.connect()
        await context_storage.clear_all()

        yield context_storage

        await context_storage.clear_all()
        await context_storage.close()

    @pytest.fixture
    async def ctx_info(self):
        yield ContextMainInfo(current_turn_id=1, created_at=1, updated_at=1)

    @pytest.fixture
    async def add_context(self):
        async def add_context_internal(db: DBContextStorage, ctx_id: str, ctx_info: ContextMainInfo) -> None:
            await db.update_context(ctx_id, ctx_info, [("labels", [(0, b"0")], list())])

        yield add_context_internal

    @staticmethod
    def configure_context_storage(
        context_storage: DBContextStorage,
        rewrite_existing: Optional[bool] = None,
        labels_subscript: Optional[_SUBSCRIPT_TYPE] = None,
        requests_subscript: Optional[_SUBSCRIPT_TYPE] = None,
        responses_subscript: Optional[_SUBSCRIPT_TYPE] = None,
        all_subscript: Optional[_SUBSCRIPT_TYPE] = None,
    ) -> None:
        if rewrite_existing is not None:
            context_storage.rewrite_existing = rewrite_existing
        if all_subscript is not None:
            labels_subscript = requests_subscript = responses_subscript = all_subscript
        if labels_subscript is not None:
            context_storage._subscripts["labels"] = labels_subscript
        if requests_subscript is not None:
            context_storage._subscripts["requests"] = requests_subscript
        if responses_subscript is not None:
            context_storage._subscripts["responses"] = responses_subscript

    async def test_add_context(self, db: DBContextStorage, ctx_info: ContextMainInfo, add_context: AddContextType):
        # test the fixture
        await add_context(db, "1", ctx_info)

    async def test_get_main_info(self, db: DBContextStorage, ctx_info: ContextMainInfo, add_context: AddContextType):
        await add_context(db, "1", ctx_info)
        assert await db.load_main_info("1") == ctx_info
        assert await db.load_main_info("2") is None

    async def test_update_main_info(self, db: DBContextStorage, ctx_info: ContextMainInfo, add_context: AddContextType):
        await add_context(db, "1", ctx_info)
        await add_context(db, "2", ctx_info)
        assert await db.load_main_info("1") == ctx_info
        assert await db.load_main_info("2") == ctx_info

        new_info = ContextMainInfo(current_turn_id=2, created_at=1, updated_at=3)
        await db.update_context("1", new_info)
        assert await db.load_main_info("1") == new_info
        assert await db.load_main_info("2") == ctx_info

    async def test_wrong_field_name(self, db: DBContextStorage):
        with pytest.raises(ValueError, match="Invalid value 'non-existent' for argument 'field_name'."):
            await db.load_field_latest("1", "non-existent")
        with pytest.raises(ValueError, match="Invalid value 'non-existent' for argument 'field_name'."):
            await db.load_field_keys("1", "non-existent")
        with pytest.raises(ValueError, match="Invalid value 'non-existent' for argument 'field_name'."):
            await db.load_field_items("1", "non-existent", [1, 2])
        with pytest.raises(ValueError, match="Invalid value 'non-existent' for argument 'field_name'."):
            await db.update_context("1", field_info=[("non-existent", [(1, b"2")], list())])

    async def test_field_get(self, db: DBContextStorage, ctx_info: ContextMainInfo, add_context: AddContextType):
        await add_context(db, "1", ctx_info)

        assert await db.load_field_latest("1", "labels") == [(0, b"0")]
        assert set(await db.load_field_keys("1", "labels")) == {0}

        assert await db.load_field_latest("1", "requests") == []
        assert set(await db.load_field_keys("1", "requests")) == set()

    async def test_field_load(self, db: DBContextStorage, ctx_info: ContextMainInfo, add_context: AddContextType):
        await add_context(db, "1", ctx_info)

        await db.update_context("1", field_info=[("requests", [(1, b"1"), (3, b"3"), (2, b"2"), (4, b"4")], list())])

        assert await db.load_field_items("1", "requests", [1, 2]) == [(1, b"1"), (2, b"2")]
        assert await db.load_field_items("1", "requests", [4, 3]) == [(3, b"3"), (4, b"4")]

    async def test_field_update(self, db: DBContextStorage, ctx_info: ContextMainInfo, add_context: AddContextType):
        await add_context(db, "1", ctx_info)
        assert await db.load_field_latest("1", "labels") == [(0, b"0")]
        assert await db.load_field_latest("1", "requests") == []

        await db.update_context("1", field_info=[("labels", [(0, b"1")], list())])
        await db.update_context("1", field_info=[("requests", [(4, b"4")], list())])
        await db.update_context("1", field_info=[("labels", [(2, b"2")], list())])

        assert await db.load_field_latest("1", "labels") == [(2, b"2"), (0, b"1")]
        assert set(await db.load_field_keys("1", "labels")) == {0, 2}
        assert await db.load_field_latest("1", "requests") == [(4, b"4")]
        assert set(await db.load_field_keys("1", "requests")) == {4}

    async def test_int_key_field_subscript(
        self, db: DBContextStorage, ctx_info: ContextMainInfo, add_context: AddContextType
    ):
        await add_context(db, "1", ctx_info)
        await db.update_context("1", field_info=[("requests", [(2, b"2")], list())])
        await db.update_context("1", field_info=[("requests", [(1, b"1")], list())])
        await db.update_context("1", field_info=[("requests", [(0, b"0")], list())])

        self.configure_context_storage(db, requests_subscript=2)
        assert await db.load_field_latest("1", "requests") == [(2, b"2"), (1, b"1")]

        self.configure_context_storage(db, requests_subscript="__all__")
        assert await db.load_field_latest("1", "requests") == [(2, b"2"), (1, b"1"), (0, b"0")]

        await db.update_context("1", field_info=[("requests", [(5, b"5")], list())])

        self.configure_context_storage(db, requests_subscript=2)
        assert await db.load_field_latest("1", "requests") == [(5, b"5"), (2, b"2")]

        self.configure_context_storage(db, requests_subscript={5, 1})
        assert await db.load_field_latest("1", "requests") == [(5, b"5"), (1, b"1")]

    async def test_delete_field_key(self, db: DBContextStorage, ctx_info: ContextMainInfo, add_context: AddContextType):
        await add_context(db, "1", ctx_info)

        await db.update_context("1", field_info=[("labels", list(), [0])])

        assert await db.load_field_latest("1", "labels") == []

    async def test_raises_on_missing_field_keys(
        self, db: DBContextStorage, ctx_info: ContextMainInfo, add_context: AddContextType
    ):
        await add_context(db, "1", ctx_info)

        assert set(await db.load_field_items("1", "labels", [0, 1])) == {(0, b"0")}
        assert set(await db.load_field_items("1", "requests", [0])) == set()

    async def test_delete_context(self, db: DBContextStorage, ctx_info: ContextMainInfo, add_context: AddContextType):
        await add_context(db, "1", ctx_info)
        await add_context(db, "2", ctx_info)

        await db.delete_context("1")

        assert await db.load_main_info("1") is None
        assert await db.load_main_info("2") == ContextMainInfo(current_turn_id=1, created_at=1, updated_at=1)

        assert set(await db.load_field_keys("1", "labels")) == set()
        assert set(await db.load_field_keys("2", "labels")) == {0}

    async def test_clear_all(self, db: DBContextStorage, ctx_info: ContextMainInfo, add_context: AddContextType):
        await add_context(db, "1", ctx_info)
        await add_context(db, "2", ctx_info)

        await db.clear_all()

        assert await db.load_main_info("1") is None
        assert await db.load_main_info("2") is None
        assert set(await db.load_field_keys("1", "labels")) == set()
        assert set(await db.load_field_keys("2", "labels")) == set()

    @pytest.mark.slow
    async def test_concurrent_operations(self, db: DBContextStorage):
        async def db_operations(key: int):
            str_key = str(key)
            key_misc = {f"{key}": key + 2}
            await asyncio.sleep(random.random() / 100)
            await db.update_context(
                str_key, ContextMainInfo(current_turn_id=key, created_at=key + 1, updated_at=key, misc=key_misc)
            )
            await asyncio.sleep(random.random() / 100)
            assert await db.load_main_info(str_key) == ContextMainInfo(
                current_turn_id=key, created_at=key + 1, updated_at=key, misc=key_misc
            )

            for idx in range(1, 20):
                requests_update = [(0, bytes(2 * key + idx)), (idx, bytes(key + idx))]
                await db.update_context(str_key, field_info=[("requests", requests_update, list())])
                await asyncio.sleep(random.random() / 100)
                keys = list(range(idx + 1))
                assert set(await db.load_field_keys(str_key, "requests")) == set(keys)
                assert set(await db.load_field_items(str_key, "requests", keys)) == {
                    (0, bytes(2 * key + idx)),
                    *[(k, bytes(key + k)) for k in range(1, idx + 1)],
                }

        operations = [db_operations(key * 2) for key in range(3)]
        await asyncio.gather(*operations)

    async def test_pipeline(self, db: DBContextStorage) -> None:
        # Test Pipeline workload on DB
        pipeline = Pipeline(**TOY_SCRIPT_KWARGS, context_storage=db)
        check_happy_path(pipeline, happy_path=HAPPY_PATH)
