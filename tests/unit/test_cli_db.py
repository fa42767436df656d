"""``sagaz db status`` and ``sagaz db upgrade`` on a new database and on a store without a
schema (an older database: ``tests/integration/test_cli_db.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sagaz.cli.main import main
from sagaz.storage.sqlite_schema import SCHEMA_VERSION


def test_a_new_database_gets_its_schema_from_db_upgrade_or_the_first_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert main(["db", "status", "--store", url]) == 0
    assert capsys.readouterr().out == (
        f"{url}: no schema yet (the first start, or sagaz db upgrade, creates it)\n"
    )
    assert not (tmp_path / "new.db").exists()  # asking created nothing
    assert main(["db", "upgrade", "--store", url]) == 0
    assert capsys.readouterr().out == f"{url}: schema created at version {SCHEMA_VERSION}\n"
    assert main(["db", "upgrade", "--store", url]) == 0
    assert capsys.readouterr().out == (
        f"{url}: schema at version {SCHEMA_VERSION} already; nothing to do\n"
    )
    assert main(["sagas", "list", "--store", url]) == 0  # a database with a schema now
    assert capsys.readouterr().err == "no sagas match\n"


def test_a_store_without_a_schema_has_nothing_to_upgrade(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["db", "status", "--store", "memory://"]) == 0
    assert capsys.readouterr().out == "memory://: this store keeps no schema\n"
    assert main(["db", "upgrade", "--store", "memory://"]) == 0
    assert capsys.readouterr().out == "memory://: this store keeps no schema; nothing to upgrade\n"


def test_a_password_in_the_store_url_is_never_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["db", "status", "--store", "postgresql://app:s3cret@127.0.0.1:1/db"]) == 1
    captured = capsys.readouterr()
    assert "s3cret" not in captured.out + captured.err
    assert "postgresql://app:***@127.0.0.1:1/db" in captured.err
