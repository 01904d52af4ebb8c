"""The `rnnserve` command: list models, generate, step, type-ahead and health checks.

Exit status: 0 success, 1 a failed call (printed as `error: <CODE>: <details>`), 2 a usage
error, 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rnnserve import _typeahead
from rnnserve._channel import TLSConfig
from rnnserve._version import __version__
from rnnserve.client import Client
from rnnserve.errors import RnnServeError
from rnnserve.types import ModelInfo

DEFAULT_ADDRESS = "127.0.0.1:50051"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Command = Callable[[Client, argparse.Namespace], int]


# ---------------------------------------------------------------- commands


def cmd_models(client: Client, args: argparse.Namespace) -> int:
    """Table (or JSON) of the servable model versions."""
    models = client.list_models()
    if args.json:
        _print_json([dataclasses.asdict(model) for model in models])
        return 0
    if not models:
        print("the server has no models loaded", file=sys.stderr)
        return 0
    rows = [
        [
            m.name,
            str(m.version),
            m.shape,
            m.cell,
            str(m.layers),
            str(m.hidden_size),
            f"{m.vocabulary.kind}/{m.vocabulary.size}",
            m.output,
        ]
        for m in models
    ]
    _print_table(["NAME", "VERSION", "SHAPE", "CELL", "LAYERS", "HIDDEN", "VOCAB", "OUTPUT"], rows)
    return 0


def cmd_generate(client: Client, args: argparse.Namespace) -> int:
    """Print the prompt, then the generated text as it arrives."""
    model = _pick_model(client, args.model, need_vocabulary=True)
    with client.create_session(model.name, model.version) as session:
        chunks = session.generate(
            args.prompt or None,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            stop=args.stop,
        )
        if args.json:
            collected = list(chunks)
            last = collected[-1] if collected else None
            _print_json(
                {
                    "model": model.name,
                    "version": model.version,
                    "prompt": args.prompt,
                    "text": "".join(chunk.text for chunk in collected),
                    "tokens": sum(len(chunk.tokens) for chunk in collected),
                    "finish_reason": last.finish_reason if last else None,
                    "matched_stop": last.matched_stop if last else None,
                }
            )
            return 0
        print(args.prompt, end="", flush=True)
        for chunk in chunks:
            print(chunk.text, end="", flush=True)
        print()
    return 0


def cmd_step(client: Client, args: argparse.Namespace) -> int:
    """Feed text into a fresh session and show the most probable next tokens."""
    model = _pick_model(client, args.model, need_vocabulary=False)
    with client.create_session(model.name, model.version) as session:
        result = session.step(text=args.text, top_k=args.top_k)
    if args.json:
        _print_json({"model": model.name, "version": model.version, **dataclasses.asdict(result)})
        return 0
    rows = [[f"{t.probability:.4f}", str(t.id), repr(t.text)] for t in result.top]
    _print_table(["PROB", "ID", "TOKEN"], rows)
    return 0


def cmd_interactive(client: Client, args: argparse.Namespace) -> int:
    """Type-ahead: keys on a terminal, lines from a pipe."""
    model = _pick_model(client, args.model, need_vocabulary=True)
    _typeahead.check_model(model)
    typeahead = _typeahead.TypeAhead(client, model, args.top_k)
    try:
        if _typeahead.stdin_is_terminal():
            title = f"{model.name} v{model.version}"
            return _typeahead.run_terminal(typeahead, sys.stdin.fileno(), sys.stdout, title)
        return _typeahead.run_lines(typeahead, sys.stdin, sys.stdout)
    finally:
        typeahead.close()


def cmd_health(client: Client, args: argparse.Namespace) -> int:
    """Print the health status; succeed only when it is SERVING."""
    status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else EXIT_FAILED


# ---------------------------------------------------------------- helpers


def _pick_model(client: Client, spec: str | None, *, need_vocabulary: bool) -> ModelInfo:
    """`NAME[:VERSION]`, or without one the first model (the first language model if needed)."""
    if spec is not None:
        name, _, version = spec.partition(":")
        if version and not version.isdigit():
            raise ValueError(f"--model {spec!r}: expected NAME or NAME:VERSION")
        return client.get_model(name, int(version or 0))
    models = client.list_models()
    suitable = [m for m in models if m.output == "vocabulary"] if need_vocabulary else models
    if not suitable:
        kind = "language models (vocabulary output)" if need_vocabulary else "models"
        raise ValueError(f"the server at {client.address} has no {kind}; see `rnnserve models`")
    return suitable[0]


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=False)]
    for row in [headers, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _unescape(value: str) -> str:
    """`--stop '\\n'`: the shell cannot easily pass a newline, so \\n, \\t and \\\\ are read."""
    return value.replace("\\\\", "\0").replace("\\n", "\n").replace("\\t", "\t").replace("\0", "\\")


def _tls_config(args: argparse.Namespace) -> TLSConfig | None:
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return None
    return TLSConfig.from_files(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


# ---------------------------------------------------------------- parser


def _connection_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options shared by every command, accepted before and after the command name.

    The copies on the subcommands (`defaults=False`) default to SUPPRESS, so they never
    overwrite a value given before the command; they are described in the main help only.
    """
    files = "PEM file of the"
    options: list[tuple[str, dict[str, Any]]] = [
        (
            "--address",
            {
                "metavar": "HOST:PORT",
                "default": os.environ.get("RNNSERVE_ADDRESS", DEFAULT_ADDRESS),
                "help": "server address (env RNNSERVE_ADDRESS; default %(default)s)",
            },
        ),
        (
            "--timeout",
            {"metavar": "SECONDS", "type": float, "default": 30.0, "help": "per call (30)"},
        ),
        (
            "--token",
            {
                "default": os.environ.get("RNNSERVE_TOKEN"),
                "help": "bearer token sent with every call (env RNNSERVE_TOKEN)",
            },
        ),
        ("--tls", {"action": "store_true", "help": "use TLS, trusting the system's CAs"}),
        ("--tls-ca", {"metavar": "FILE", "help": f"{files} server's CA (implies --tls)"}),
        ("--tls-cert", {"metavar": "FILE", "help": f"{files} client certificate (mutual TLS)"}),
        ("--tls-key", {"metavar": "FILE", "help": f"{files} client certificate's key"}),
        ("--tls-server-name", {"metavar": "NAME", "help": "name the server's certificate has"}),
    ]
    group = parser.add_argument_group("connection")
    for flag, settings in options:
        if not defaults:
            settings |= {"default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
        group.add_argument(flag, **settings)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `rnnserve` command."""
    parser = argparse.ArgumentParser(
        prog="rnnserve",
        description="Command-line client for an rnnserve server (stateful RNN/GRU serving).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _connection_options(parser, defaults=True)
    shared = argparse.ArgumentParser(add_help=False)
    _connection_options(shared, defaults=False)
    commands = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")

    def command(name: str, run: Command, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=[shared],
            help=help_text,
            description=help_text,
            epilog="The connection options of `rnnserve --help` may also follow the command.",
        )
        sub.set_defaults(run=run)
        return sub

    def model_option(sub: argparse.ArgumentParser, default_text: str) -> None:
        sub.add_argument(
            "--model", metavar="NAME[:VERSION]", help=f"model to use (default: {default_text})"
        )

    models = command("models", cmd_models, "list the servable models")
    models.add_argument("--json", action="store_true", help="print JSON")

    generate = command("generate", cmd_generate, "generate text, printed as it arrives")
    generate.add_argument("prompt", nargs="?", default="", help="text to continue")
    model_option(generate, "the first language model")
    generate.add_argument(
        "--max-tokens", metavar="N", type=int, default=0, help="at most N tokens (server: 64)"
    )
    generate.add_argument("--temperature", metavar="T", type=float, help="0 is greedy (1.0)")
    generate.add_argument(
        "--top-k", metavar="K", type=int, default=0, help="sample among the K most likely"
    )
    generate.add_argument("--top-p", metavar="P", type=float, help="nucleus sampling, (0, 1]")
    generate.add_argument("--seed", metavar="N", type=int, help="for reproducible sampling")
    generate.add_argument(
        "--stop",
        action="append",
        type=_unescape,
        default=[],
        metavar="STR",
        help="stop once the text ends with STR; repeatable; \\n and \\t are understood",
    )
    generate.add_argument("--json", action="store_true", help="print one JSON object at the end")

    step = command("step", cmd_step, "show the most likely next tokens after some text")
    step.add_argument("text", help="text to feed")
    model_option(step, "the first model")
    step.add_argument("--top-k", metavar="K", type=int, default=5, help="candidates (5)")
    step.add_argument("--json", action="store_true", help="print JSON")

    interactive = command(
        "interactive", cmd_interactive, "type-ahead: the likely next characters as you type"
    )
    model_option(interactive, "the first language model")
    interactive.add_argument("--top-k", metavar="K", type=int, default=5, help="candidates (5)")

    health = command("health", cmd_health, "print the health status; exit 0 iff SERVING")
    health.add_argument("--service", default="", help="service to ask about (default: server)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: `sys.argv[1:]`); returns the exit status."""
    args = build_parser().parse_args(argv)
    run: Command = args.run
    try:
        tls = _tls_config(args)
        with Client(args.address, timeout=args.timeout, tls=tls, token=args.token) as client:
            return run(client, args)
    except RnnServeError as error:
        print(f"error: {error.code.name}: {error.details}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, OSError) as error:
        if isinstance(error, BrokenPipeError):
            # The reader (`| head`) left: stay quiet, including at interpreter exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_FAILED
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, ValueError) else EXIT_FAILED
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
