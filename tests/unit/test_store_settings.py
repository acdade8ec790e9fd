"""Store URLs and settings, without a database."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from broker.errors import InvalidRequest
from broker.store import StoreSettings, create_store_engine


def test_a_bare_postgresql_url_gets_the_psycopg_driver() -> None:
    for scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        settings = StoreSettings(url=SecretStr(f"{scheme}://kf:pw@db.internal:5432/keyferry"))
        engine = create_store_engine(settings)
        assert engine.url.drivername == "postgresql+psycopg"
        engine.dispose()


def test_the_default_store_is_an_sqlite_file() -> None:
    engine = create_store_engine(StoreSettings())
    assert engine.url.get_backend_name() == "sqlite"
    assert engine.url.database == "keyferry.db"
    engine.dispose()


@pytest.mark.parametrize("url", ["mysql://kf:hunter2@db/keyferry", "not a url hunter2"])
def test_other_databases_are_refused_with_the_field_named(url: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        create_store_engine(StoreSettings(url=SecretStr(url)))
    assert refused.value.field == "store.url"
    assert "hunter2" not in str(refused.value)


def test_the_url_password_is_not_shown() -> None:
    settings = StoreSettings(url=SecretStr("postgresql://kf:hunter2-secret@db/keyferry"))
    assert "hunter2-secret" not in repr(settings)
    assert "hunter2-secret" not in str(settings.model_dump())
