"""The `rnnserve` command: parsing, output of every command, errors, Ctrl-C, the terminal."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rnnserve import __version__
from rnnserve.cli import build_parser, main

if TYPE_CHECKING:
    from conftest import ToyServer

RNNSERVE = [sys.executable, "-m", "rnnserve"]
# The CLI as started from an interactive shell, where Ctrl-C sends SIGINT. A shell that
# ignores SIGINT (a background job, nohup, `trap '' INT`) passes that on to its children,
# and Python installs its KeyboardInterrupt handler only where SIGINT is not ignored: so
# the test restores the handler an interactive start would have, then runs the CLI.
INTERACTIVE_RNNSERVE = [
    sys.executable,
    "-c",
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('rnnserve', run_name='__main__', alter_sys=True)",
]


def run_cli(toy: ToyServer, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["--address", toy.address, *argv])
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------- parsing


def test_help_and_version_run_as_installed() -> None:
    script = Path(sys.executable).with_name("rnnserve")
    for command in ([str(script)], RNNSERVE):
        shown = subprocess.run([*command, "--help"], capture_output=True, text=True, check=True)
        assert "usage: rnnserve" in shown.stdout
        for name in ("models", "generate", "step", "classify", "translate", "reload", "health"):
            assert name in shown.stdout
    version = subprocess.run([*RNNSERVE, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"rnnserve {__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["generate", "--max-tokens", "many"],
        ["generate", "--stop"],
        ["generate", "--condition"],
        ["step"],
        ["classify"],
        ["translate", "--max-tokens", "1"],
        ["reload", "extra"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    shown = subprocess.run([*RNNSERVE, *argv], capture_output=True, text=True, check=False)
    assert shown.returncode == 2
    assert "usage:" in shown.stderr and "Traceback" not in shown.stderr


@pytest.mark.parametrize(
    ("argv", "command", "mistyped"),
    [
        (["generate", "--max-tokenz", "3"], "generate", "--max-tokenz"),  # 3: the prompt
        (["step", "abc", "--topk", "3"], "step", "--topk 3"),
        (["models", "--jsn"], "models", "--jsn"),
        (["health", "--srvice", "x"], "health", "--srvice x"),
        (["--timeout", "3", "reload", "--force"], "reload", "--force"),
    ],
)
def test_a_mistyped_option_shows_its_commands_usage(
    argv: list[str], command: str, mistyped: str
) -> None:
    shown = subprocess.run([*RNNSERVE, *argv], capture_output=True, text=True, check=False)
    assert shown.returncode == 2
    assert shown.stderr.startswith(f"usage: rnnserve {command} ")
    assert shown.stderr.endswith(f"rnnserve {command}: error: unrecognized arguments: {mistyped}\n")


def test_connection_options_go_before_or_after_the_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RNNSERVE_ADDRESS", "from-env:1")
    monkeypatch.setenv("RNNSERVE_TOKEN", "env-token")
    parser = build_parser()
    defaults = parser.parse_args(["models"])
    assert (defaults.address, defaults.token, defaults.timeout) == ("from-env:1", "env-token", 30)
    before = parser.parse_args(["--address", "a:1", "--timeout", "5", "models", "--json"])
    after = parser.parse_args(["models", "--address", "b:2", "--json", "--timeout", "7"])
    assert (before.address, before.timeout, before.json) == ("a:1", 5.0, True)
    assert (after.address, after.timeout, after.json) == ("b:2", 7.0, True)


def test_generate_options_parse() -> None:
    args = build_parser().parse_args(
        [
            *("generate", "Once", "--model", "m:2", "--max-tokens", "9", "--temperature", "0"),
            *("--top-k", "3", "--top-p", "0.5", "--seed", "7", "--stop", "\\n", "--stop", "x"),
        ]
    )
    assert (args.prompt, args.model, args.max_tokens, args.temperature) == ("Once", "m:2", 9, 0)
    assert (args.top_k, args.top_p, args.seed) == (3, 0.5, 7)
    assert args.stop == ["\n", "x"]


# ---------------------------------------------------------------- commands


def test_models_table_and_json(toy: ToyServer, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(toy, capsys, "models")
    header, char, labels = out.splitlines()
    assert status == 0
    assert header.split() == [
        "NAME", "VERSION", "SHAPE", "CELL", "LAYERS", "HIDDEN", "VOCAB", "OUTPUT"
    ]  # fmt: skip
    assert char.split() == [
        "toy-char",
        "1",
        "many-to-many",
        "gru",
        "1",
        "8",
        "char/29",
        "vocabulary",
    ]
    assert labels.split()[0] == "toy-labels"
    status, out, _ = run_cli(toy, capsys, "models", "--json")
    assert [m["name"] for m in json.loads(out)] == ["toy-char", "toy-labels"]


def test_generate_prints_prompt_then_text(
    toy: ToyServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(toy, capsys, "generate", "ab", "--max-tokens", "3") == (0, "abcde\n", "")
    _, out, _ = run_cli(toy, capsys, "generate", "--stop", "d", "--json")
    reply = json.loads(out)
    assert (reply["text"], reply["finish_reason"], reply["matched_stop"]) == (
        "abcd",
        "stop-string",
        "d",
    )
    assert toy.servicer.sessions == {}  # every command closes its session


def test_step_shows_the_likely_next_tokens(
    toy: ToyServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_cli(toy, capsys, "step", "--model", "toy-char:1", "ab", "--top-k", "2")
    assert status == 0
    assert [line.split() for line in out.splitlines()] == [
        ["PROB", "ID", "TOKEN"],
        ["0.5000", "2", "'c'"],
        ["0.2500", "3", "'d'"],
    ]
    status, out, _ = run_cli(toy, capsys, "step", "xy", "--json")
    reply = json.loads(out)
    assert (reply["model"], reply["steps"], reply["top"][0]["text"]) == ("toy-char", 2, "z")


def test_health_exit_status(toy: ToyServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(toy, capsys, "health") == (0, "SERVING\n", "")
    assert run_cli(toy, capsys, "health", "--service", "draining") == (1, "NOT_SERVING\n", "")
    assert run_cli(toy, capsys, "health", "--service", "rnnserve.v1.RnnServe/nope") == (
        1,
        "",
        "error: NOT_FOUND: the health service knows no service 'rnnserve.v1.RnnServe/nope'; "
        "an rnnserve server reports on '' (the server), rnnserve.v1.RnnServe and "
        "rnnserve.v1.RnnServe/<model> for each model it has loaded (`rnnserve models`)\n",
    )


def test_server_errors_print_one_line(toy: ToyServer, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(toy, capsys, "generate", "hi", "--model", "nope")
    assert (status, out) == (1, "")
    assert err == "error: NOT_FOUND: model 'nope' is not loaded\n"
    status, _, err = run_cli(toy, capsys, "step", "A")
    assert status == 1 and err.startswith("error: INVALID_ARGUMENT: text: character 'A'")


def test_local_errors_exit_2_and_unreachable_servers_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--address", "http://localhost", "models"]) == 2
    assert "error: address 'http://localhost'" in capsys.readouterr().err
    assert main(["--address", "127.0.0.1:1", "--timeout", "5", "models"]) == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")


def test_the_token_comes_from_the_environment(
    toy: ToyServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RNNSERVE_TOKEN", "t0k3n")
    assert main(["--address", toy.address, "models"]) == 0
    assert toy.servicer.recorded.metadata[-1]["authorization"] == "Bearer t0k3n"


# ---------------------------------------------------------------- interactive


def test_interactive_from_a_pipe_prints_one_line_per_character(toy: ToyServer) -> None:
    shown = subprocess.run(
        [*RNNSERVE, "--address", toy.address, "interactive", "--top-k", "2"],
        input="ab\nz",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (shown.returncode, shown.stderr) == (0, "")
    assert shown.stdout.splitlines() == [
        "'a'\t'b':0.5000 'c':0.2500",
        "'b'\t'c':0.5000 'd':0.2500",
        "'\\n'\t'a':0.5000 'b':0.2500",
        "'z'\t' ':0.5000 '\\n':0.2500",
    ]
    recorded = toy.servicer.recorded
    assert (recorded.step_streams, recorded.stream_requests) == (1, 4)  # one stream throughout


def test_interactive_reports_rejected_characters_and_goes_on(
    toy: ToyServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("aXb"))
    status, out, _ = run_cli(toy, capsys, "interactive", "--top-k", "1")
    assert status == 1
    assert out.splitlines() == [
        "'a'\t'b':0.5000",
        "'X'\terror: INVALID_ARGUMENT: text: character 'X' is not in the vocabulary",
        "'b'\t'c':0.5000",  # the state after "ab": the rejected character changed nothing
    ]


def test_interactive_needs_a_character_language_model(
    toy: ToyServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run_cli(toy, capsys, "interactive", "--model", "toy-labels")
    assert status == 2 and "character-level language model" in err


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX terminal")
def test_interactive_on_a_terminal_redraws_and_restores_it(toy: ToyServer) -> None:
    import pty
    import termios

    primary, secondary = pty.openpty()
    before = termios.tcgetattr(secondary)
    process = subprocess.Popen(
        [*RNNSERVE, "--address", toy.address, "interactive", "--top-k", "2"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    screen = b""

    def read_until(marker: str, times: int = 1) -> None:
        nonlocal screen
        deadline = time.monotonic() + 30
        while screen.count(marker.encode()) < times and time.monotonic() < deadline:
            if select.select([primary], [], [], 0.1)[0]:
                screen += os.read(primary, 4096)
        assert screen.count(marker.encode()) == times, screen

    try:
        read_until("(start typing)")
        os.write(primary, b"a")
        read_until("a │ b 50%  c 25%")
        os.write(primary, b"b")
        read_until("ab │ c 50%  d 25%")
        os.write(primary, b"\x7f")  # Backspace: a fresh session is fed "a"
        read_until("a │ b 50%  c 25%", times=2)
        os.write(primary, b"\x04")
        assert process.wait(timeout=30) == 0
        assert termios.tcgetattr(secondary) == before
    finally:
        process.kill()
        os.close(primary)
        os.close(secondary)
    assert toy.servicer.sessions == {}
    recorded = toy.servicer.recorded
    assert (recorded.step_streams, recorded.stream_requests) == (1, 3)  # a, b, then "a" again


# ---------------------------------------------------------------- Ctrl-C


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
def test_ctrl_c_cancels_generation_cleanly(toy: ToyServer) -> None:
    toy.servicer.token_delay_s = 0.02
    process = subprocess.Popen(
        [*INTERACTIVE_RNNSERVE, "--address", toy.address, "generate", "go", "--max-tokens", "4096"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stdout.read(5) == b"gopqr"  # the prompt, then tokens as they arrive
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert b"Traceback" not in err
    assert toy.servicer.recorded.generate_cancelled.wait(5)
    deadline = time.monotonic() + 5
    while toy.servicer.sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert toy.servicer.sessions == {}  # the session was closed on the way out
