"""The ops tests read what the process logs: start each from the logging levels a fresh process has."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def fresh_logger_levels() -> Iterator[None]:
    """Other tests (the vendor bench) quiet the `bridge` logger; a process here starts with it unset."""
    touched = {name: logging.getLogger(name).level for name in ("bridge", "websockets", "aiohttp")}
    for name in touched:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield
    for name, level in touched.items():
        logging.getLogger(name).setLevel(level)
