"""timelinectl against a real daemon: every verb, human output and --json, exit codes.

Most runs call `main(argv)` in this process (fast); a few run the installed console script as
a subprocess, to prove the real entry point, stdin and exit statuses."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import DaemonProcess, short_tempdir
from timelined.client import Client
from timelined.ctl.main import main

TIMELINECTL = Path(sys.executable).with_name("timelinectl")


class Ctl:
    def __init__(self, daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> None:
        self.socket = str(daemon.socket_path)
        self.capsys = capsys

    def __call__(self, *argv: str, code: int = 0) -> tuple[str, str]:
        self.capsys.readouterr()
        try:
            got = main(["--socket", self.socket, *argv])
        except SystemExit as exc:  # argparse
            got = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        assert got == code, f"timelinectl {' '.join(argv)} exited {got}:\n{out}\n{err}"
        return out, err

    def json(self, *argv: str, code: int = 0) -> Any:
        out, _ = self(*("--json", *argv), code=code)
        return json.loads(out)


@pytest.fixture
def ctl(daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> Ctl:
    return Ctl(daemon, capsys)


def test_a_first_session(ctl: Ctl) -> None:
    out, _ = ctl("create", "Trip planning", "--metadata", '{"owner": "me"}')
    assert "Trip planning" in out and "conv_" in out
    conv = ctl.json("create", "Second")["conversation"]
    root = conv["root_context_id"]
    assert conv["name"] == "Second" and conv["status"] == "active"

    out, _ = ctl("append", root, "Where should we go?")
    assert "seq" in out and "position 1" in out
    appended = ctl.json(
        "append", root, "Somewhere warm.", "--role", "assistant", "--tokens-output", "4"
    )
    assert appended["block"]["tokens_output"] == 4 and appended["seq"] > 0
    side = ctl.json("spawn", root, "compare trains", "--inherit-last", "1")["context"]
    ctl("append", side["id"], "Interrail or Eurail?")

    out, _ = ctl("tree", conv["id"])
    lines = out.splitlines()
    assert lines[0].startswith(conv["id"]) and '"Second"' in lines[0]
    assert root in lines[1] and "paused" in lines[1]
    assert side["id"] in lines[2] and "active" in lines[2] and "focus" in lines[2]
    assert lines[2].lstrip().startswith(("└─", "`-"))
    tree = ctl.json("tree", side["id"])  # a context id names its conversation
    assert [c["id"] for c in tree["contexts"]] == [root, side["id"]]

    out, _ = ctl("history", side["id"])
    assert "inherited" in out and "Somewhere warm." in out and "Interrail or Eurail?" in out
    history = ctl.json("history", side["id"])["blocks"]
    assert [(h["source_context_id"], h["inherited"]) for h in history] == [
        (root, True),
        (side["id"], False),
    ]

    out, _ = ctl("search", "Interrail")
    assert "[Interrail]" in out
    hits = ctl.json("search", "warm", "--conversation", conv["id"], "--role", "assistant")["hits"]
    assert [h["role"] for h in hits] == ["assistant"]

    merged = ctl.json("merge", side["id"], "--summary", "Interrail it is")["context"]
    assert merged["status"] == "merged"
    out, _ = ctl("tree", conv["id"])
    assert "merged" in out and "focus" in out.splitlines()[1]

    out, _ = ctl("blocks", root)
    assert "Interrail it is" in out and "POS" in out
    page = ctl.json("blocks", root, "--limit", "1")
    assert len(page["blocks"]) == 1 and page["next"] == 1
    _, err = ctl("blocks", root, "--limit", "1")
    assert f"--after {page['next']}" in err
    back = ctl.json("blocks", root, "--before", "3", "--limit", "1")
    assert [b["position"] for b in back["blocks"]] == [2]
    assert [b["role"] for b in ctl.json("blocks", root, "--role", "system")["blocks"]] == ["system"]

    out, _ = ctl("stats", conv["id"])
    assert "blocks per role" in out
    stats = ctl.json("stats", conv["id"])["stats"]
    assert stats["blocks"] == 4 and stats["contexts_per_status"] == {"active": 1, "merged": 1}


def test_conversation_and_context_verbs(ctl: Ctl) -> None:
    conv = ctl.json("create", "Verbs")["conversation"]
    root = conv["root_context_id"]
    out, _ = ctl("conversation", conv["id"])
    assert "Verbs" in out and root in out
    assert ctl.json("rename", conv["id"], "Renamed")["conversation"]["name"] == "Renamed"
    _, err = ctl("update", conv["id"], code=64)
    assert "--name and/or --metadata" in err
    updated = ctl.json("update", conv["id"], "--metadata", '{"a": 1}')["conversation"]
    assert updated["metadata"] == {"a": 1} and updated["name"] == "Renamed"
    out, _ = ctl("conversations")
    assert "Renamed" in out and "NAME" in out
    listed = ctl.json("conversations", "--limit", "1000")["conversations"]
    assert conv["id"] in [c["id"] for c in listed]

    a = ctl.json("spawn", root, "a")["context"]
    b = ctl.json("spawn", root, "b")["context"]
    assert ctl.json("pause", b["id"])["context"]["status"] == "paused"
    assert ctl.json("resume", b["id"])["context"]["status"] == "active"
    assert ctl.json("focus", a["id"])["context"]["id"] == a["id"]
    startup = ctl.json("startup")["state"]
    assert startup["has_data"] and startup["focused_context"]["id"] == a["id"]
    out, _ = ctl("startup")
    assert "focused context" in out and a["id"] in out
    assert ctl.json("reparent", b["id"], a["id"])["context"]["parent_id"] == a["id"]
    assert ctl.json("archive", b["id"], "--reason", "x")["context"]["status"] == "archived"
    assert ctl.json("restore", b["id"])["context"]["status"] == "paused"
    assert ctl.json("tags", a["id"], "red", "blue")["context"]["tags"] == ["red", "blue"]
    assert ctl.json("tags", a["id"], "--clear")["context"]["tags"] == []
    ctl("tags", a["id"], code=64)
    ref = ctl.json("xref", "add", a["id"], b["id"], "see-also", "--note", "n")["crossref"]
    out, _ = ctl("context", a["id"])
    assert ref["id"] in out and "see-also" in out
    listed = ctl.json("xref", "list", b["id"])
    assert listed == {"crossrefs": [ref], "next": None}
    second = ctl.json("xref", "add", b["id"], a["id"], "depends-on")["crossref"]
    out, err = ctl("xref", "list", a["id"], "--limit", "1")
    assert ref["id"] in out and second["id"] not in out and "see-also" in out
    hint = _hint(err)[2:]  # without --socket PATH, which the harness adds itself
    assert hint[:4] == ["xref", "list", a["id"], "--limit"] and "--after" in hint
    out, err = ctl(*hint)
    assert second["id"] in out and ref["id"] not in out and "more: " not in err
    out, _ = ctl("xref", "revoke", ref["id"])
    assert "revoked" in out

    archived = ctl.json("archive-conversation", conv["id"], "--reason", "done")["conversation"]
    assert archived["status"] == "archived"
    out, _ = ctl("conversations", "--all")
    assert conv["id"] in out


def test_block_verbs(ctl: Ctl) -> None:
    root = ctl.json("create", "Blocks")["conversation"]["root_context_id"]
    block = ctl.json(
        "append",
        root,
        "with everything",
        "--id",
        "blk_ctl_1",
        "--timestamp",
        "2030-05-05T05:05:05Z",
        "--time-taken",
        "0.25",
        "--tokens-input",
        "3",
        "--metadata",
        '{"m": true}',
        "--sub-blocks",
        '[{"type": "thought", "content": "hmm"}]',
    )["block"]
    assert block["id"] == "blk_ctl_1" and block["sub_blocks"][0]["type"] == "thought"
    out, _ = ctl("block", "blk_ctl_1")
    assert "with everything" in out and "sub-block" in out and "2030-05-05" in out
    assert ctl.json("block", "blk_ctl_1")["block"] == block
    since = ctl.json("blocks", root, "--since", "2030-01-01T00:00:00Z")["blocks"]
    assert [b["id"] for b in since] == ["blk_ctl_1"]


def test_admin_verbs(ctl: Ctl, client: Client) -> None:
    ctl("create", "Admin")
    out, _ = ctl("status")
    assert "timelined" in out and "last seq" in out and "boot" in out and "clean" in out
    status = ctl.json("status")["status"]
    assert (status["boot"]["verdict"] == "clean" and status["verify"]["state"] in ("never",)) or (
        status["verify"]
    )

    out, _ = ctl("log", "--limit", "2")
    lines = out.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2]
    raw = Path(status["state_dir"]) / "log"
    first_segment = sorted(raw.iterdir())[0].read_text(encoding="utf-8").splitlines()
    assert lines == first_segment[:2]  # byte for byte what the log holds
    everything, _ = ctl("log", "--all", "--limit", "3")
    assert len(everything.splitlines()) == status["last_seq"]
    assert len(ctl.json("log", "--after-seq", "1", "--limit", "1")["events"]) == 1

    out, _ = ctl("recovery-report")
    assert "no crash-recovery report" in out
    out, _ = ctl("recovery-report", status["boot"]["report_id"])
    assert "verdict: clean" in out and "What was found" in out
    ctl("recovery-report", "nope", code=1)
    out, _ = ctl("reports")
    assert status["boot"]["report_id"] in out
    assert ctl.json("reports", "--kind", "boot")["reports"][0]["kind"] == "boot"

    out, _ = ctl("reload")
    assert "nothing changed" in out or "applied" in out
    # Without a verifier in this build the verbs say so; with one they answer.
    for verb in (["verify"], ["verify", "--wait"], ["verify-report"], ["repair"]):
        try:
            ctl(*verb)
        except AssertionError as exc:
            assert "FeatureUnavailable" in str(exc) or "exited 1" in str(exc), exc


def test_errors_and_exit_codes(ctl: Ctl) -> None:
    _, err = ctl("context", "ctx_nope", code=1)
    assert "io.timelined.Timeline.ContextNotFound" in err and "ctx_nope" in err
    error = json.loads(ctl("--json", "context", "ctx_nope", code=1)[1])
    assert error == {
        "error": "io.timelined.Timeline.ContextNotFound",
        "parameters": {"id": "ctx_nope", "message": "no context with id 'ctx_nope'"},
    }
    # Named by the interface of the method called (docs/interfaces.md, "Error names").
    error = json.loads(ctl("--json", "recovery-report", "rep_nope", code=1)[1])
    assert error["error"] == "io.timelined.Admin.ReportNotFound"
    root = ctl.json("create", "Errors")["conversation"]["root_context_id"]
    _, err = ctl("merge", root, code=1)
    assert "InvalidTransition" in err
    _, err = ctl("search", '"open', code=65)
    assert "BadQuery" in err
    _, err = ctl("blocks", root, "--since", "not a time", code=65)
    assert "InvalidArgument" in err
    _, err = ctl("append", root, "x", "--role", "bad role!", code=65)
    assert "InvalidParameter" in err and "role" in err
    ctl("nosuchverb", code=64)
    ctl("create", code=64)
    ctl("create", "x", "--metadata", "[1]", code=64)
    ctl("blocks", root, "--limit", "0", code=64)


def _run(*argv: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [str(TIMELINECTL), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_the_console_script(daemon: DaemonProcess) -> None:
    env = {"TIMELINED_SOCKET": str(daemon.socket_path)}
    done = _run("--json", "create", "From a shell", env=env)
    assert done.returncode == 0, done.stderr
    root = json.loads(done.stdout)["conversation"]["root_context_id"]
    done = _run("append", root, "--role", "user", stdin="piped\ncontent\n", env=env)
    assert done.returncode == 0, done.stderr
    done = _run("--json", "history", root, env=env)
    assert json.loads(done.stdout)["blocks"][0]["block"]["content"] == "piped\ncontent\n"
    done = _run("tree", root, env=env)
    assert done.returncode == 0 and root in done.stdout
    done = _run("context", "ctx_nope", env=env)
    assert done.returncode == 1 and "ContextNotFound" in done.stderr
    done = _run("--socket", "/tmp/no-such-dir/timelined.sock", "status")
    assert done.returncode == 69
    assert "no socket there" in done.stderr and "is the daemon running?" in done.stderr
    done = _run("--frobnicate")
    assert done.returncode == 64


def _hint(err: str) -> list[str]:
    """The arguments of a `more: timelinectl ...` paging hint."""
    line = next(line for line in err.splitlines() if line.startswith("more: "))
    words = shlex.split(line.removeprefix("more: "))
    assert words[0] == "timelinectl"
    return words[1:]


def test_paging_hints_repeat_the_command_line_with_its_filters(ctl: Ctl) -> None:
    archived = ctl.json("create", "to archive")["conversation"]["id"]
    ctl("archive-conversation", archived)
    for name in ("first", "second"):
        ctl("create", name)
    seen: list[str] = []
    argv = ["conversations", "-a", "--limit", "1"]
    for _ in range(10):
        out, err = ctl(*argv)
        seen += [line.split()[0] for line in out.splitlines()[1:]]
        if "more: " not in err:
            break
        argv = _hint(err)[2:]  # without --socket PATH, which the harness adds itself
        assert argv[:4] == ["conversations", "-a", "--limit", "1"], argv
    assert archived in seen  # followed hint by hint, the archived one is still listed

    root = ctl.json("create", "Roles")["conversation"]["root_context_id"]
    for n in range(4):
        ctl("append", root, f"b{n}", "--role", "user" if n % 2 == 0 else "assistant")
    _, err = ctl("blocks", root, "--role", "user", "--limit", "1")
    assert _hint(err)[2:] == ["blocks", root, "--role", "user", "--limit", "1", "--after", "1"]
    _, err = ctl("log", "--limit", "2", "--after-seq", "1")
    assert _hint(err)[2:] == ["log", "--limit", "2", "--after-seq", "3"]


def test_json_after_the_verb_and_argument_checks(ctl: Ctl, tmp_path: Path) -> None:
    out, _ = ctl("status", "--json")
    assert json.loads(out)["status"]["last_seq"] >= 0
    _, err = ctl("xref", "revoke", "xref_nope", "--json", code=1)
    assert json.loads(err)["error"] == "io.timelined.Timeline.CrossRefNotFound"
    conv = ctl.json("create", "Checks")["conversation"]
    root = conv["root_context_id"]
    _, err = ctl("tags", root, "a", "--clear", code=64)
    assert "not both" in err
    for bad in ("nan", "inf", "-inf"):
        _, err = ctl("append", root, "x", f"--time-taken={bad}", code=65)
        assert "time_taken" in err and "finite" in err, err
    _, err = ctl("blocks", root, "--limit", "-3", code=64)
    assert "must be 1 or more" in err
    (tmp_path / "adir").mkdir()
    _, err = ctl("export", root, "-o", str(tmp_path / "adir"), code=73)
    assert "is a directory" in err
    error = json.loads(ctl("--json", "export", root, "-o", str(tmp_path / "adir"), code=73)[1])
    assert error["error"] == "timelinectl.CannotWrite"
    assert error["parameters"]["path"] == str(tmp_path / "adir")
    error = json.loads(ctl("blocks", root, "--limit", "0", "--json", code=64)[1])
    assert (
        error["error"] == "timelinectl.UsageError" and "1 or more" in error["parameters"]["message"]
    )
    written = ctl.json("export", conv["id"], "-o", str(tmp_path / "export.jsonl"))
    assert written == {
        "written": str(tmp_path / "export.jsonl"),
        "bytes": (tmp_path / "export.jsonl").stat().st_size,
    }
    (tmp_path / "afile").write_text("x")
    _, err = ctl("--socket", str(tmp_path / "afile"), "status", code=69)
    assert "not a socket" in err


def test_json_anywhere_among_a_verbs_arguments(ctl: Ctl) -> None:
    """README: --json may come before or after the verb, so also between its positionals (where
    argparse alone refused `append CTX --json TEXT`: "unrecognized arguments")."""
    root = ctl.json("create", "Anywhere")["conversation"]["root_context_id"]
    for argv in (
        ["append", root, "--json", "between"],
        ["append", "--json", root, "before"],
        ["append", root, "after", "--json"],
        ["append", root, "--role", "assistant", "--json", "after an option"],
    ):
        out, _ = ctl(*argv)
        assert json.loads(out)["block"]["content"] == argv[-1 if argv[-1] != "--json" else -2]
    out, _ = ctl("tags", root, "a", "--json", "b")
    assert json.loads(out)["context"]["tags"] == ["a", "b"]
    out, _ = ctl("append", root, "--", "--json")  # after `--`: the content, not the flag
    assert "position" in out and not out.startswith("{")
    assert ctl.json("blocks", root)["blocks"][-1]["content"] == "--json"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run timelinectl as another uid")
def test_a_socket_this_user_may_not_open_exits_77() -> None:
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run(
        [*as_nobody, sys.executable, "-c", "import timelined"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("uid 65534 cannot run this venv's python (it lives in a private directory)")
    with short_tempdir() as base:  # world-searchable, unlike pytest's tmp_path
        private = base / "private"  # as a state directory holding the socket (`make run`)
        private.mkdir(mode=0o700)
        shared = base / "shared"  # as /run/timelined: the socket's own mode decides
        shared.mkdir(mode=0o755)
        found: dict[Path, str] = {}
        for directory in (private, shared):
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(str(directory / "s.sock"))
            (directory / "s.sock").chmod(0o660)
            listener.listen()
            try:
                done = subprocess.run(
                    [
                        *as_nobody,
                        *(sys.executable, "-m", "timelined.ctl"),
                        *("--socket", str(directory / "s.sock"), "status"),
                    ],
                    cwd=Path(__file__).resolve().parents[2],
                    env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
            finally:
                listener.close()
            assert done.returncode == 77, done.stderr
            found[directory] = done.stderr
        # The directory is what refuses: named, and the advice is about it, not the socket's group.
        assert f"may not enter the socket's directory {private}" in found[private], found[private]
        assert "socket_path" in found[private] and "socket's group" not in found[private]
        assert "permission denied on the socket" in found[shared], found[shared]
        assert "socket's group" in found[shared]


def test_a_nan_anywhere_in_the_parameters_is_refused(client: Client) -> None:
    from timelined.errors import InvalidArgument

    root = client.create_conversation("NaN").root_context_id
    with pytest.raises(InvalidArgument, match=r"metadata\.scores\[1\]: must be a finite"):
        client.append_block(root, "user", "x", metadata={"scores": [1.0, float("nan")]})
    with pytest.raises(InvalidArgument, match="time_taken"):
        client.append_block(root, "user", "x", time_taken=float("inf"))
    assert client.list_blocks(root).blocks == []  # nothing was sent


# --- issue 18: terminal escapes, exit codes, empty stdin, a closed pipe ----------------------

HOSTILE_NAME = "\x1b]0;pwned\x07\x1b[41mred\x1b[0m\x9b2J\x7fname"
HOSTILE_CONTENT = "first line\n\x1b[1A\x1b[2K\x1b[2Jerased\rover\ttabbed hostile"
HOSTILE_TAG = "tag\x1b[5m"


def test_human_output_escapes_control_characters_and_json_keeps_them(
    ctl: Ctl, daemon: DaemonProcess
) -> None:
    conv = ctl.json("create", HOSTILE_NAME)["conversation"]
    assert conv["name"] == HOSTILE_NAME  # --json: exact
    root = conv["root_context_id"]
    seq = ctl.json("append", root, HOSTILE_CONTENT)["seq"]
    ctl.json("tags", root, HOSTILE_TAG)
    ctl.json("spawn", root, "why\x1b[31m\nnot")
    outputs = {
        "tree": ctl("tree", root),
        "conversations": ctl("conversations"),
        "conversation": ctl("conversation", conv["id"]),
        "context": ctl("context", root),
        "history": ctl("history", root),
        "blocks": ctl("blocks", root),
        "search": ctl("search", "hostile"),
        "log": ctl("log", "--after-seq", str(seq - 1)),
        "startup": ctl("startup"),
        "error": ctl("context", "ctx_\x1b]0;x\x07", code=1),
    }
    for verb, (out, err) in outputs.items():
        assert "\x1b" not in out + err and "\x9b" not in out + err, (verb, out, err)
        assert "\x07" not in out + err and "\x7f" not in out + err and "\r" not in out, verb
    assert "\\x1b]0;pwned\\x07" in outputs["tree"][0]
    assert "\\x1b[2J" in outputs["history"][0]
    assert '"why\\x1b[31m\\nnot"' in outputs["tree"][0]  # one line: the newline as \n
    # Every one-line field escapes a newline the same way (README): `\n`, not a space.
    two = ctl.json("create", "two\nlines")["conversation"]["id"]
    for verb, argv in {
        "tree": ["tree", two],
        "conversations": ["conversations"],
        "conversation": ["conversation", two],
        "history": ["history", root],
        "blocks": ["blocks", root],
    }.items():
        out, _ = ctl(*argv)
        wanted = "first line\\n\\x1b[1A" if verb in ("history", "blocks") else "two\\nlines"
        assert wanted in out, (verb, out)
    block_id = ctl.json("history", root)["blocks"][0]["block"]["id"]
    out, _ = ctl("block", block_id)  # the content's own newline and tab are kept
    assert "first line\n\\x1b[1A" in out and "over\ttabbed" in out and "\x1b" not in out
    # --json keeps every byte
    assert ctl.json("history", root)["blocks"][0]["block"]["content"] == HOSTILE_CONTENT
    assert ctl.json("conversation", conv["id"])["conversation"]["name"] == HOSTILE_NAME
    assert HOSTILE_TAG in ctl.json("context", root)["context"]["tags"]
    logged = ctl.json("log", "--after-seq", str(seq - 1))["events"][0]
    assert logged["data"]["block"]["content"] == HOSTILE_CONTENT
    # watch, as a process: human lines escaped, --json lines exact
    env = {**os.environ, "TIMELINED_SOCKET": str(daemon.socket_path)}
    for as_json in (False, True):
        flags = ["--json"] if as_json else []
        watcher = subprocess.Popen(
            [str(TIMELINECTL), *flags, "watch", "--after-seq", str(seq - 1)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            line = watcher.stdout.readline()  # type: ignore[union-attr]
        finally:
            watcher.kill()
            watcher.communicate(timeout=30)
        if as_json:
            assert json.loads(line)["data"]["block"]["content"] == HOSTILE_CONTENT
        else:
            assert b"erased" in line and b"\x1b" not in line and b"\\x1b[2J" in line, line
            assert b"first line\\n\\x1b[1A" in line, line  # the newline as \n, as elsewhere


def test_an_auth_refusal_exits_77(capsys: pytest.CaptureFixture[str]) -> None:
    """[auth] that lets this user only read: a write is refused, exit 77."""
    auth = {"allow_uids": [12345], "read_only_gids": [os.getgid()]}
    with short_tempdir() as base, DaemonProcess(base, auth=auth) as other:
        assert main(["--socket", str(other.socket_path), "create", "x"]) == 77
        err = capsys.readouterr().err
        assert "PermissionDenied" in err and "may not call" in err
        assert main(["--socket", str(other.socket_path), "--json", "create", "y"]) == 77
        error = json.loads(capsys.readouterr().err)
        assert error["error"].endswith("PermissionDenied")


def test_append_with_empty_stdin_is_a_usage_error(daemon: DaemonProcess, client: Client) -> None:
    env = {"TIMELINED_SOCKET": str(daemon.socket_path)}
    root = client.create_conversation("empty stdin").root_context_id
    done = _run("append", root, stdin="", env=env)
    assert done.returncode == 64, done.stderr
    assert "no content" in done.stderr and "stdin was empty" in done.stderr
    done = _run("--json", "append", root, "-", stdin="", env=env)
    assert done.returncode == 64 and json.loads(done.stderr)["error"] == "timelinectl.UsageError"
    assert client.list_blocks(root).blocks == []  # nothing was stored
    assert _run("append", root, "", env=env).returncode == 0  # asked for explicitly: stored


def _block_sigpipe() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("sigpipe", ["default", "blocked"])
def test_a_reader_that_stops_early_ends_timelinectl_quietly(
    daemon: DaemonProcess, client: Client, sigpipe: str, unbuffered: bool
) -> None:
    """`timelinectl log | head -1`: exit 141 and nothing on stderr, also when the parent left
    SIGPIPE blocked (then the write fails with EPIPE instead of killing the process), and with
    --json, one large write, also under PYTHONUNBUFFERED (an unbuffered stdout, whose text
    layer would drop the rest of a short write silently)."""
    env = {**os.environ, "TIMELINED_SOCKET": str(daemon.socket_path)}
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    root = client.create_conversation("a long log").root_context_id
    for i in range(100):  # more than a pipe holds (64 KiB), with the --json form too
        client.append_block(root, "user", f"line {i} " + "x" * 2000)
    for argv in (["log", "--all"], ["--json", "log", "--all"]):
        reader = subprocess.Popen(
            [str(TIMELINECTL), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=_block_sigpipe if sigpipe == "blocked" else None,
        )
        assert reader.stdout is not None and reader.stderr is not None
        assert reader.stdout.readline()
        reader.stdout.close()  # what `head -1` does after its line
        err = reader.stderr.read()
        assert reader.wait(timeout=60) == 141, err
        assert err == b"", err


def test_append_batch_from_a_file_and_from_stdin(
    ctl: Ctl, daemon: DaemonProcess, client: Client, tmp_path: Path
) -> None:
    root = ctl.json("create", "Batch")["conversation"]["root_context_id"]
    turn = tmp_path / "turn.jsonl"
    turn.write_text(
        '{"role": "user", "content": "what is 2+2?", "id": "batch-0"}\n'
        "\n"
        '{"role": "tool", "content": "calc(2+2)", "metadata": {"tool": "calc"}}\n'
        '{"role": "assistant", "content": "4", "tokens_output": 1}\n'
    )
    stored = ctl.json("append", root, "--batch", str(turn))["blocks"]
    assert [(b["position"], b["existed"]) for b in stored] == [(1, False), (2, False), (3, False)]
    assert stored[0]["id"] == "batch-0" and not any("content" in b for b in stored)
    listed = client.list_blocks(root).blocks
    assert [b.id for b in listed] == [b["id"] for b in stored]
    assert [b.role for b in listed] == ["user", "tool", "assistant"]
    assert listed[1].metadata == {"tool": "calc"}
    # A file of ids only is a safe retry: the text output says which blocks were stored before.
    first = tmp_path / "first.jsonl"
    first.write_text('{"role": "user", "content": "what is 2+2?", "id": "batch-0"}\n')
    out, _ = ctl("append", root, "--batch", str(first))
    assert f"batch-0  seq {stored[0]['seq']}  position 1 in {root}  (stored before)" in out
    # The same file again: its id-less lines are new blocks beside a stored one: a conflict.
    _, err = ctl("append", root, "--batch", str(turn), code=1)
    assert "batch-0" in err and "already exists" in err
    env = {"TIMELINED_SOCKET": str(daemon.socket_path)}
    done = _run(
        "append", root, "--batch", "-", stdin='{"role": "user", "content": "piped"}\n', env=env
    )
    assert done.returncode == 0, done.stderr
    assert "position 4" in done.stdout
    assert [b.content for b in client.list_blocks(root).blocks][-1] == "piped"


def test_append_batch_names_the_bad_line_and_writes_nothing(ctl: Ctl, tmp_path: Path) -> None:
    root = ctl.json("create", "Bad batch")["conversation"]["root_context_id"]
    bad = tmp_path / "bad.jsonl"
    cases = {
        '{"role": "user", "content": "ok"}\n{"role": "user", "content": 7}\n': (
            "line 2",
            "content",
        ),
        '{"role": "user", "content": "ok"}\n\n{"role": "user"\n': ("line 3", "not JSON"),
        '{"role": "user", "content": "x", "context_id": "ctx_other"}\n': (
            "line 1",
            "context_id",
        ),
        "\n\n": ("no blocks", "no blocks"),
    }
    for text, (where, what) in cases.items():
        bad.write_text(text)
        _, err = ctl("append", root, "--batch", str(bad), code=65)
        assert where in err and what in err and str(bad) in err, err
    bad.write_text('{"role": "user", "content": "ok"}\n' * 1001)
    _, err = ctl("append", root, "--batch", str(bad), code=65)
    assert "line 1001" in err and "at most 1000" in err
    _, err = ctl("--json", "append", root, "--batch", str(bad), code=65)
    error = json.loads(err)
    assert error["error"] == "timelinectl.BadBatch"
    assert error["parameters"]["line"] == 1001 and error["parameters"]["file"] == str(bad)
    _, err = ctl("append", root, "inline", "--batch", str(bad), code=64)
    assert "describes one block" in err
    _, err = ctl("append", root, "--batch", str(tmp_path / "missing.jsonl"), code=66)
    assert "cannot read" in err
    assert ctl.json("blocks", root)["blocks"] == []


def test_retract_hides_a_block_from_blocks_but_not_from_include_retracted(ctl: Ctl) -> None:
    root = ctl.json("create", "Retract")["conversation"]["root_context_id"]
    kept = ctl.json("append", root, "kept")["block"]["id"]
    gone = ctl.json("append", root, "taken back")["block"]["id"]
    out, _ = ctl("retract", gone, "--reason", "typo")
    assert out.strip() == f"retracted {gone} (position 2 in {root})"
    assert [b["id"] for b in ctl.json("blocks", root)["blocks"]] == [kept]
    listed = ctl.json("blocks", root, "--include-retracted")["blocks"]
    assert [b["id"] for b in listed] == [kept, gone]
    assert [h["block"]["id"] for h in ctl.json("history", root)["blocks"]] == [kept]
    name = ctl.json("conversations", "--name", "Retract")["conversations"]
    assert [c["root_context_id"] for c in name] == [root]
