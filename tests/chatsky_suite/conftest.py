"""Chatsky's suite marks its long test `slow` (its own pytest configuration declares the marker)."""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a long test of Chatsky's suite")
