"""A fixture for tests that check what the Kafka clients log (secrets never among it)."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture
def all_logs(caplog):
    """``caplog`` at DEBUG, the kafka-python loggers included (WARNING again afterwards).
    Import it into a ``conftest.py`` to use it."""
    caplog.set_level(logging.DEBUG)
    logging.getLogger("kafka").setLevel(logging.DEBUG)
    yield caplog
    logging.getLogger("kafka").setLevel(logging.WARNING)
