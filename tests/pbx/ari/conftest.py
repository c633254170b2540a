"""Fixtures for the Stasis application tests: a fake Asterisk and settings pointing at it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from bridge.config import Settings
from tests.fakes.ari import FakeAsterisk


@pytest.fixture
async def fake() -> AsyncIterator[FakeAsterisk]:
    try:
        asterisk = FakeAsterisk()
    except FileNotFoundError as exc:
        pytest.skip(f"ARI api-docs not found ({exc}); set ARI_API_DOCS to Asterisk's rest-api/api-docs")
    await asterisk.start()
    yield asterisk
    await asterisk.stop()


@pytest.fixture
def ari_settings(settings: Settings, fake: FakeAsterisk) -> Settings:
    return dataclasses.replace(settings, ari_url=fake.url, ari_username="adapter", ari_password="secret")
