"""Every config key: its default, a good value, and a bad value refused with the key named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from timelined.config import find_config_file, load_config, parse_config
from timelined.errors import ConfigError

# (section, key, default, good TOML value, parsed good value, bad TOML value)
KEYS = [
    ("daemon", "state_dir", "", '"/tmp/tl-state"', "/tmp/tl-state", "5"),
    ("daemon", "socket_path", "", '"/tmp/tl.sock"', "/tmp/tl.sock", "true"),
    ("daemon", "socket_mode", "0660", '"0600"', "0600", '"0999"'),
    ("daemon", "log_level", "info", '"debug"', "debug", '"loud"'),
    ("log", "fsync", "always", '"interval"', "interval", '"sometimes"'),
    ("log", "fsync_interval_ms", 50, "200", 200, "0"),
    ("log", "segment_bytes", 64 * 1024 * 1024, "1048576", 1048576, "10"),
    ("log", "max_batch", 512, "64", 64, "-1"),
    ("log", "reserve_bytes", 4 * 1024 * 1024, "0", 0, "-1"),
    ("verify", "on_boot", True, "false", False, '"yes"'),
    ("verify", "interval_s", 3600, "60", 60, "-5"),
    ("verify", "on_drift", "report", '"repair"', "repair", '"ignore"'),
    ("limits", "max_message_bytes", 16 * 1024 * 1024, "65536", 65536, "1"),
    ("limits", "max_block_bytes", 4 * 1024 * 1024, "4096", 4096, '"big"'),
    ("limits", "max_connections", 256, "8", 8, "0"),
    ("limits", "idle_timeout_s", 600, "0", 0, "1.5"),
    ("limits", "max_connection_buffer_bytes", 64 * 1024 * 1024, "1048576", 1048576, "1024"),
    ("limits", "max_buffered_bytes", 512 * 1024 * 1024, "134217728", 134217728, "1000"),
    ("limits", "max_connections_per_uid", None, "8", 8, "0"),
    ("limits", "max_buffered_bytes_per_uid", None, "134217728", 134217728, "1000"),
    ("limits", "max_crossref_bytes_per_context", None, "65536", 65536, "1000"),
    ("limits", "reserved_for_writers", None, "4", 4, "-1"),
    ("limits", "idle_timeout_new_s", 5, "1", 1, "-1"),
    ("auth", "allow_uids", None, "[0, 1000]", [0, 1000], '["root"]'),
    ("auth", "allow_gids", [], "[100]", [100], "[-1]"),
    ("auth", "read_only_gids", [], "[200, 201]", [200, 201], '"200"'),
]


@pytest.mark.parametrize(("section", "key", "default", "good", "parsed", "bad"), KEYS)
def test_every_key(
    section: str, key: str, default: object, good: str, parsed: object, bad: str
) -> None:
    defaults = parse_config("")
    assert getattr(getattr(defaults, section), key) == default
    cfg = parse_config(f"[{section}]\n{key} = {good}\n")
    assert getattr(getattr(cfg, section), key) == parsed
    with pytest.raises(ConfigError) as info:
        parse_config(f"[{section}]\n{key} = {bad}\n")
    assert info.value.key.startswith(f"{section}.{key}")
    assert f"{section}.{key}" in str(info.value)


def test_connection_shares_default_to_fractions_of_max_connections() -> None:
    limits = parse_config("[limits]\nmax_connections = 16\n").limits
    assert (limits.effective_per_uid(), limits.effective_reserved()) == (4, 1)
    limits = parse_config("").limits
    assert (limits.effective_per_uid(), limits.effective_reserved()) == (64, 16)
    limits = parse_config("[limits]\nmax_connections = 2\n").limits
    assert (limits.effective_per_uid(), limits.effective_reserved()) == (1, 0)
    text = "[limits]\nmax_connections = 8\nreserved_for_writers = 3\nmax_connections_per_uid = 9\n"
    limits = parse_config(text).limits
    assert (limits.effective_per_uid(), limits.effective_reserved()) == (9, 3)


def test_the_buffered_bytes_share_defaults_to_a_quarter_and_holds_a_frame() -> None:
    assert parse_config("").limits.effective_buffered_per_uid() == 128 * 1024**2
    text = "[limits]\nmax_buffered_bytes = 33554432\nmax_connection_buffer_bytes = 1048576\n"
    assert parse_config(text).limits.effective_buffered_per_uid() == 16 * 1024**2
    for share in (8 * 1024**2, 1024**3):  # below one frame, above the whole budget
        with pytest.raises(ConfigError) as info:
            parse_config(f"[limits]\nmax_buffered_bytes_per_uid = {share}\n")
        assert "max_buffered_bytes_per_uid" in str(info.value)


def test_the_crossref_bound_defaults_to_an_eighth_of_a_frame_and_fits_one() -> None:
    assert parse_config("").limits.effective_crossref_bytes() == 2 * 1024**2
    text = "[limits]\nmax_message_bytes = 1048576\nmax_block_bytes = 65536\n"
    assert parse_config(text).limits.effective_crossref_bytes() == 128 * 1024
    with pytest.raises(ConfigError) as info:  # more than GetContext's reply could hold
        parse_config(text + "max_crossref_bytes_per_context = 1048577\n")
    assert "max_crossref_bytes_per_context" in str(info.value)


def test_log_space_reserved_past_16_mib_is_refused_by_name() -> None:
    # A boot after a crash reads the released space into memory once: the bound keeps that
    # within the daemon's memory target (docs/operations.md).
    assert parse_config("[log]\nreserve_bytes = 16777216\n").log.reserve_bytes == 16 * 1024**2
    with pytest.raises(ConfigError) as info:
        parse_config("[log]\nreserve_bytes = 16777217\n")
    assert info.value.key == "log.reserve_bytes"


def test_a_reserve_that_leaves_read_only_peers_nothing_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[limits]\nmax_connections = 8\nreserved_for_writers = 8\n")
    assert info.value.key == "limits.reserved_for_writers"
    assert "max_connections" in str(info.value)


def test_unknown_key_and_section_are_named() -> None:
    with pytest.raises(ConfigError, match=r"log\.fsink: unknown key"):
        parse_config('[log]\nfsink = "always"\n')
    with pytest.raises(ConfigError, match="logs: unknown key"):
        parse_config("[logs]\nfsync = 1\n")


def test_syntax_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="syntax"):
        parse_config("[log\n")


def test_shipped_config_is_valid_and_keeps_state_in_var() -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "config.toml")
    assert cfg.state_dir == root / "var"
    assert cfg.log.fsync == "always"


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "sub" / "config.toml"
    conf.parent.mkdir()
    conf.write_text('[daemon]\nstate_dir = "state"\n')
    cfg = load_config(conf)
    assert cfg.state_dir == tmp_path / "sub" / "state"
    assert cfg.socket_path == tmp_path / "sub" / "state" / "timelined.sock"


def test_systemd_directories_are_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "st"))
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.toml").write_text("[log]\nfsync = 'off'\n")
    monkeypatch.setenv("CONFIGURATION_DIRECTORY", str(tmp_path / "conf"))
    monkeypatch.delenv("TIMELINED_CONFIG", raising=False)
    assert find_config_file() == tmp_path / "conf" / "config.toml"
    cfg = load_config()
    assert cfg.state_dir == tmp_path / "st"
    assert cfg.socket_path == tmp_path / "run" / "timelined.sock"
    assert cfg.log.fsync == "off"


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("TIMELINED_CONFIG", "CONFIGURATION_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    assert find_config_file() is None
    (tmp_path / "config.toml").write_text("")
    assert find_config_file() == Path("config.toml")
    monkeypatch.setenv("TIMELINED_CONFIG", "/elsewhere.toml")
    assert find_config_file() == Path("/elsewhere.toml")
    assert find_config_file("/explicit.toml") == Path("/explicit.toml")


def test_socket_path_too_long_is_refused(tmp_path: Path) -> None:
    long = "x" * 120
    with pytest.raises(ConfigError, match=r"daemon\.socket_path"):
        parse_config(f'[daemon]\nsocket_path = "/tmp/{long}.sock"\n')


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    assert os.path.exists(tmp_path)


def test_the_buffer_budgets_must_hold_a_frame() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config("[limits]\nmax_message_bytes = 4194304\nmax_buffered_bytes = 2097152\n")
    assert refused.value.params["key"] == "limits"
    with pytest.raises(ConfigError):
        parse_config("[limits]\nmax_connection_buffer_bytes = 2147483648\n")
