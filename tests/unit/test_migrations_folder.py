"""The migrations are read from the checkout's sql/migrations (they are not packaged)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.store.migrations import MIGRATIONS_DIR, load_migrations


def test_the_checkouts_migrations_are_found() -> None:
    assert MIGRATIONS_DIR.is_dir()
    assert load_migrations()[0].version == 1


def test_a_missing_migrations_folder_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    """An install that is not a checkout (a wheel: sql/ is not in it) found no migrations,
    and serve reported the database up to date, then served it without its tables."""
    missing = tmp_path / "site-packages" / "sql" / "migrations"
    with pytest.raises(FileNotFoundError, match="checkout"):
        load_migrations(missing)
