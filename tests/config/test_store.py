"""The [store] section: the backend, its dsn (never with a password), the password file, and
the connection string printed only redacted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from timelined import conninfo
from timelined.config import parse_config, read_password
from timelined.daemon.reload import diff, reloaded
from timelined.errors import ConfigError

PG = '[store]\nbackend = "postgresql"\n'


def _timelined(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "timelined", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_the_default_is_sqlite_without_a_dsn() -> None:
    store = parse_config("").store
    assert (store.backend, store.dsn, store.password_file, store.read_pool_size) == (
        "sqlite",
        "",
        "",
        4,
    )


def test_postgresql_takes_a_conninfo_or_a_uri() -> None:
    store = parse_config(PG + 'dsn = "host=/run/postgresql dbname=tl user=timelined"\n').store
    assert store.backend == "postgresql"
    assert conninfo.parse(store.dsn) == {
        "host": "/run/postgresql",
        "dbname": "tl",
        "user": "timelined",
    }
    uri = "postgresql://timelined@db.example:5433/tl?sslmode=verify-full"
    assert conninfo.parse(parse_config(PG + f'dsn = "{uri}"\n').store.dsn) == {
        "user": "timelined",
        "host": "db.example",
        "port": "5433",
        "dbname": "tl",
        "sslmode": "verify-full",
    }


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db password=hunter2 dbname=tl",
        "host=db password = 'hunter 2'",
        "postgresql://timelined:hunter2@db/tl",
        "postgres://db/tl?password=hunter2",
    ],
)
def test_a_dsn_with_a_password_is_refused_without_quoting_it(dsn: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(PG + f'dsn = "{dsn}"\n')
    assert info.value.key == "store.dsn"
    assert "password_file" in str(info.value)
    assert "hunter" not in str(info.value)


def test_postgresql_needs_a_dsn_and_sqlite_takes_none() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(PG)
    assert info.value.key == "store.dsn" and "required" in str(info.value)
    for key in ("dsn", "password_file"):
        with pytest.raises(ConfigError) as info:
            parse_config(f'[store]\n{key} = "x"\n')
        assert info.value.key == f"store.{key}" and "postgresql" in str(info.value)


def test_a_malformed_dsn_and_an_unknown_backend_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(PG + 'dsn = "host=\'unclosed"\n')
    assert info.value.key == "store.dsn" and "not a libpq connection string" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config('[store]\nbackend = "mysql"\n')
    assert info.value.key == "store.backend"


def test_redact_hides_every_password_and_keeps_the_rest() -> None:
    assert conninfo.redact("host=db password='a b\\'c' dbname=tl") == (
        "host=db password=***** dbname=tl"
    )
    assert conninfo.redact("host=db dbname='my db'") == "host=db dbname='my db'"
    assert conninfo.redact("postgresql://u:secret@db:5432/tl?password=x&sslmode=require") == (
        "postgresql://u:*****@db:5432/tl?password=%2A%2A%2A%2A%2A&sslmode=require"
    )
    assert "secret" not in conninfo.redact("host='secret")


def test_the_password_file_is_resolved_read_and_must_not_be_world_readable(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text(PG + 'dsn = "dbname=tl"\npassword_file = "pw"\n')
    store = parse_config(conf.read_text(), conf).store
    assert store.password_file == str(tmp_path / "pw")
    with pytest.raises(ConfigError) as info:
        read_password(store)  # missing
    assert info.value.key == "store.password_file" and "cannot read" in str(info.value)
    secret = tmp_path / "pw"
    secret.write_text("s3cret pass\nignored\n")
    os.chmod(secret, 0o644)
    with pytest.raises(ConfigError, match="readable by everyone"):
        read_password(store)
    os.chmod(secret, 0o640)
    assert read_password(store) == "s3cret pass"
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_password(store)
    assert read_password(parse_config("").store) is None


def test_check_config_prints_the_store_and_checks_the_password_file(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "var"}"\n'
        + PG
        + 'dsn = "host=/run/pg dbname=tl"\npassword_file = "pw"\n'
    )
    (tmp_path / "pw").write_text("s3cret\n")
    os.chmod(tmp_path / "pw", 0o600)

    def check(*extra: str) -> subprocess.CompletedProcess[str]:
        return _timelined("check-config", "--config", str(conf), *extra)

    out = check()
    assert out.returncode == 0, out.stderr
    assert "store       postgresql host=/run/pg dbname=tl" in out.stdout
    resolved = json.loads(check("--json").stdout)["store"]
    assert resolved["dsn"] == "host=/run/pg dbname=tl"
    assert resolved["password_file"] == str(tmp_path / "pw")
    assert "s3cret" not in out.stdout + out.stderr
    os.chmod(tmp_path / "pw", 0o604)
    out = check()
    assert out.returncode == 78 and "store.password_file" in out.stderr


def test_serve_refuses_an_unreadable_password_file_with_78(tmp_path: Path) -> None:
    """Before the boot: nothing is locked or created, and the exit code stops restart loops."""
    conf = tmp_path / "config.toml"
    conf.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "var"}"\n'
        + PG
        + 'dsn = "host=/nonexistent dbname=tl"\npassword_file = "missing"\n'
    )
    out = _timelined("serve", "--config", str(conf))
    assert out.returncode == 78, out.stderr
    assert "store.password_file" in out.stderr and "cannot read" in out.stderr
    assert not (tmp_path / "var").exists()


def test_a_changed_store_needs_a_restart_and_a_reload_says_so() -> None:
    before = parse_config("")
    after = parse_config(PG + 'dsn = "host=/run/pg dbname=tl"\nread_pool_size = 8\n')
    reply = diff(before, after)
    assert reply.restart_required == ["store.backend", "store.dsn", "store.read_pool_size"]
    assert reloaded(before, after).store == before.store  # kept until the restart
