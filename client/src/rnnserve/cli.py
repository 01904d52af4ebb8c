"""The `rnnserve` command: list, reload, load and unload models, generate, step, classify,
translate, type-ahead and health checks.

Exit status: 0 success, 1 a failed call (printed as `error: <CODE>: <details>`), 2 a usage
error, 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rnnserve import _typeahead
from rnnserve._channel import TLSConfig
from rnnserve._version import __version__
from rnnserve.client import Client
from rnnserve.errors import RnnServeError
from rnnserve.types import ModelInfo, ReloadResult, StepInput

DEFAULT_ADDRESS = "127.0.0.1:50051"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Command = Callable[[Client, argparse.Namespace], int]


# ---------------------------------------------------------------- commands


def cmd_models(client: Client, args: argparse.Namespace) -> int:
    """Table (or JSON) of the servable model versions, then the models still training."""
    models = client.list_models()
    if args.json:
        _print_json([dataclasses.asdict(model) for model in models])
        return 0
    training = client.training_models()
    if not models:
        print("the server has no models loaded", file=sys.stderr)
    rows = [
        [
            m.name,
            str(m.version),
            m.shape,
            m.cell,
            str(m.layers),
            str(m.hidden_size),
            f"{m.vocabulary.kind}/{m.vocabulary.size}"
            if m.vocabulary is not None
            else f"vectors/{m.input_size}",
            m.output,
        ]
        for m in models
    ]
    if rows:
        headers = ["NAME", "VERSION", "SHAPE", "CELL", "LAYERS", "HIDDEN", "VOCAB", "OUTPUT"]
        _print_table(headers, rows)
    for model in training:
        print(
            f"still training: {model.name} ({model.phase}, step {model.step}/{model.steps}, "
            f"{model.progress:.0%}, {model.seconds:.0f} s); served once written"
        )
    return 0


def cmd_generate(client: Client, args: argparse.Namespace) -> int:
    """Print the prompt, once the server has accepted the request, then the generated text
    as it arrives."""
    if args.condition is None:
        model = _pick_model(client, args.model, _LANGUAGE_MODELS)
    else:
        model = _pick_model(client, args.model, _CONDITIONAL_GENERATORS)
    _check_start(model, args.condition)
    session = client.create_session(model.name, model.version, condition=args.condition)
    with session:
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
                    "condition": args.condition,
                    "prompt": args.prompt,
                    "text": "".join(chunk.text for chunk in collected),
                    "tokens": sum(len(chunk.tokens) for chunk in collected),
                    "finish_reason": last.finish_reason if last else None,
                    "matched_stop": last.matched_stop if last else None,
                }
            )
            return 0
        # The server checks the request before its first answer: a rejected prompt or
        # option is then reported alone, without the prompt echoed as if it had started.
        echoed = False
        for chunk in chunks:
            if not echoed:
                print(args.prompt, end="", flush=True)
                echoed = True
            print(chunk.text, end="", flush=True)
        print("" if echoed else args.prompt)
    return 0


def _check_start(model: ModelInfo, condition: str | None) -> None:
    """A session of `model` can start for `generate` (with `condition` if given)."""
    if model.initial_state == "condition" and condition is None:
        raise ValueError(
            f"{model.name} is a conditional generator: give --condition, one of "
            f"{', '.join(model.conditions)}"
        )
    if model.initial_state == "encoder":
        raise ValueError(
            f"{model.name} is an encoder-decoder model: it decodes a source; "
            f"use `rnnserve translate --model {model.name} SOURCE`"
        )
    if condition is not None and model.initial_state != "condition":
        raise ValueError(f"--condition is for conditional generators; {model.name} is not one")


def cmd_step(client: Client, args: argparse.Namespace) -> int:
    """Feed text into a fresh session and show the most probable next tokens."""
    model = _pick_model(client, args.model, _ANY_MODEL)
    with client.create_session(model.name, model.version) as session:
        result = session.step(text=args.text, top_k=args.top_k)
    if args.json:
        _print_json({"model": model.name, "version": model.version, **dataclasses.asdict(result)})
        return 0
    rows = [[f"{t.probability:.4f}", str(t.id), repr(t.text)] for t in result.top]
    _print_table(["PROB", "ID", "TOKEN"], rows)
    return 0


def cmd_stream(client: Client, args: argparse.Namespace) -> int:
    """Stream float vectors (one a line) into a fresh session, one step each, and show
    the model's output after every step as it comes."""
    model = _pick_model(client, args.model, _VECTOR_MODELS)
    rows = _read_vectors(args.file, model.input_size)
    with client.create_session(model.name, model.version) as session:
        steps = (StepInput(session.id, vectors=[row], top_k=args.top_k) for row in rows)
        for number, result in enumerate(client.step_stream(steps), start=1):
            top = result.top[0] if result.top else None
            if args.json:
                print(json.dumps({"step": number, **dataclasses.asdict(result)}), flush=True)
                continue
            shown = [str(number)]
            if top is not None:
                shown += [top.text, f"{top.probability:.4f}"]
            if result.values:
                shown.append(" ".join(f"{v:.6g}" for v in result.values))
            print("\t".join(shown), flush=True)
    return 0


def _read_vectors(path: str, size: int) -> list[list[float]]:
    """The vectors of a file ("-": standard input): one a line, its floats separated by
    commas or whitespace; blank lines and lines starting with # are skipped."""
    with open(path, encoding="utf-8") if path != "-" else contextlib.nullcontext(sys.stdin) as f:
        lines = [(n, line.strip()) for n, line in enumerate(f, start=1)]
    rows = []
    for number, line in lines:
        if not line or line.startswith("#"):
            continue
        try:
            row = [float(value) for value in line.replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"{path}:{number}: not a line of numbers: {line[:40]!r}") from None
        if len(row) != size:
            raise ValueError(f"{path}:{number}: {len(row)} values; the model reads {size}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no vectors")
    return rows


def cmd_classify(client: Client, args: argparse.Namespace) -> int:
    """The most probable labels of a text; with --every-step, the leading label per token."""
    model = _pick_model(client, args.model, _CLASSIFIERS)
    result = client.classify(
        model.name, args.text, version=model.version, top_k=args.top_k, every_step=args.every_step
    )
    if args.json:
        _print_json(
            {
                "model": model.name,
                "version": model.version,
                "labels": model.labels,
                **dataclasses.asdict(result),
            }
        )
        return 0
    _print_table(["PROB", "LABEL"], [[f"{t.probability:.4f}", t.text] for t in result.top])
    if result.steps:
        # Character models take one token per character: show which one each row follows.
        by_char = (
            model.vocabulary is not None
            and model.vocabulary.kind == "char"
            and len(result.steps) == len(args.text)
        )
        rows = []
        for position, row in enumerate(result.steps):
            best = max(range(len(row)), key=row.__getitem__)
            token = [repr(args.text[position])] if by_char else []
            rows.append([str(position + 1), *token, model.labels[best], f"{row[best]:.4f}"])
        print()
        _print_table(["STEP", *(["TOKEN"] if by_char else []), "TOP LABEL", "PROB"], rows)
    return 0


def cmd_translate(client: Client, args: argparse.Namespace) -> int:
    """Print the decoding of the source by an encoder-decoder model."""
    model = _pick_model(client, args.model, _ENCODER_DECODERS)
    result = client.translate(
        model.name,
        args.source,
        version=model.version,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    if args.json:
        _print_json(
            {
                "model": model.name,
                "version": model.version,
                "source": args.source,
                "text": result.text,
                "tokens": len(result.tokens),
                "finish_reason": result.finish_reason,
            }
        )
        return 0
    print(result.text)
    return 0


def cmd_reload(client: Client, args: argparse.Namespace) -> int:
    """Rescan the server's model repository; fail if a package was refused."""
    return _print_changes(client.reload_models(), args.json)


def cmd_load(client: Client, args: argparse.Namespace) -> int:
    """Load one model from the server's repository; fail if a package was refused."""
    return _print_changes(client.load_model(args.name), args.json)


def cmd_unload(client: Client, args: argparse.Namespace) -> int:
    """Take a model, or one version, out of service."""
    name, version = _name_and_version(args.model, "unload")
    result = client.unload_model(name, version)
    if args.json:
        _print_json(dataclasses.asdict(result))
        return 0
    for removed in result.removed:
        print(f"removed  {removed}")
    if result.open_sessions:
        print(f"{result.open_sessions} sessions still open on it (they go on until closed)")
    return 0


def _print_changes(result: ReloadResult, as_json: bool) -> int:
    """What a reload or load changed; the exit status is 1 if a package was refused."""
    if as_json:
        _print_json(dataclasses.asdict(result))
    else:
        for name in result.added:
            print(f"added    {name}")
        for name in result.removed:
            print(f"removed  {name}")
        for package in result.refused:
            print(f"refused  {package.path}: {package.reason}")
        print(f"{len(result.models)} model versions loaded")
    return EXIT_FAILED if result.refused else 0


def cmd_interactive(client: Client, args: argparse.Namespace) -> int:
    """Type-ahead: keys on a terminal, lines from a pipe."""
    model = _pick_model(client, args.model, _LANGUAGE_MODELS)
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


@dataclass(frozen=True)
class _Kind:
    """Which models a command can use, and how to name them in an error."""

    description: str
    suits: Callable[[ModelInfo], bool]


_ANY_MODEL = _Kind("models", lambda m: True)
_LANGUAGE_MODELS = _Kind("language models (vocabulary output)", lambda m: m.output == "vocabulary")
_CONDITIONAL_GENERATORS = _Kind(
    "conditional generators (initial state 'condition')", lambda m: m.initial_state == "condition"
)
_CLASSIFIERS = _Kind(
    "classifiers (label or sigmoid output)", lambda m: m.output in ("labels", "sigmoid")
)
_VECTOR_MODELS = _Kind("models of float-vector inputs", lambda m: m.input == "vectors")
_ENCODER_DECODERS = _Kind(
    "encoder-decoder models (initial state 'encoder')", lambda m: m.initial_state == "encoder"
)


def _pick_model(client: Client, spec: str | None, kind: _Kind) -> ModelInfo:
    """`NAME[:VERSION]`, or without one the first model (by name) of the kind the command
    needs. Without a version, the model's default version: the server's choice, as for
    `Client.create_session(name)` (the highest loaded, unless the server pins another)."""
    if spec is not None:
        return client.get_model(*_name_and_version(spec, "--model"))
    suitable = [m for m in client.list_models() if kind.suits(m)]
    if not suitable:
        raise ValueError(
            f"the server at {client.address} has no {kind.description}; see `rnnserve models`"
        )
    return client.get_model(suitable[0].name)


def _name_and_version(spec: str, given_as: str) -> tuple[str, int]:
    """`NAME` (version 0) or `NAME:VERSION`, given as the option or argument `given_as`."""
    name, _, version = spec.partition(":")
    if version and not version.isdigit():
        raise ValueError(f"{given_as} {spec!r}: expected NAME or NAME:VERSION")
    return name, int(version or 0)


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

    def command(
        name: str, run: Command, help_text: str, details: str = ""
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=[shared],
            help=help_text,
            description=f"{help_text}. {details}" if details else help_text,
            epilog="The connection options of `rnnserve --help` may also follow the command.",
        )
        sub.set_defaults(run=run, command_parser=sub)
        return sub

    def model_option(sub: argparse.ArgumentParser, default_text: str) -> None:
        sub.add_argument(
            "--model", metavar="NAME[:VERSION]", help=f"model to use (default: {default_text})"
        )

    def sampling_options(sub: argparse.ArgumentParser, *, temperature_help: str) -> None:
        sub.add_argument(
            "--max-tokens", metavar="N", type=int, default=0, help="at most N tokens (server: 64)"
        )
        sub.add_argument("--temperature", metavar="T", type=float, help=temperature_help)
        sub.add_argument(
            "--top-k", metavar="K", type=int, default=0, help="sample among the K most likely"
        )
        sub.add_argument("--top-p", metavar="P", type=float, help="nucleus sampling, (0, 1]")
        sub.add_argument("--seed", metavar="N", type=int, help="for reproducible sampling")

    models = command("models", cmd_models, "list the servable models")
    models.add_argument("--json", action="store_true", help="print JSON")

    generate = command("generate", cmd_generate, "generate text, printed as it arrives")
    generate.add_argument("prompt", nargs="?", default="", help="text to continue (optional)")
    model_option(generate, "the first language model")
    generate.add_argument(
        "--condition",
        metavar="NAME",
        help="for conditional generators: start from this condition, one of the model's "
        "conditions (`rnnserve models --json` lists them); default model: the first "
        "conditional generator",
    )
    sampling_options(generate, temperature_help="0 is greedy (1.0)")
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

    stream = command(
        "stream",
        cmd_stream,
        "stream float vectors into a model, one step each, printing every step's output",
        "Each line of FILE is one vector (floats separated by commas or spaces; blank lines "
        "and # comments skipped). Prints per step: its number, the most probable label and "
        "its probability, and the real values, tab-separated.",
    )
    stream.add_argument("file", metavar="FILE", help="the vectors, one a line ('-': stdin)")
    model_option(stream, "the first model of vector inputs")
    stream.add_argument("--top-k", metavar="K", type=int, default=1, help="labels kept (1)")
    stream.add_argument("--json", action="store_true", help="print one JSON object per step")

    classify = command(
        "classify", cmd_classify, "classify a text with a label or sigmoid model (no session kept)"
    )
    classify.add_argument("text", help="text to classify")
    model_option(classify, "the first classifier")
    classify.add_argument("--top-k", metavar="K", type=int, default=5, help="labels shown (5)")
    classify.add_argument(
        "--every-step", action="store_true", help="also show the leading label after each token"
    )
    classify.add_argument(
        "--json", action="store_true", help="print JSON, with every label's probability"
    )

    translate = command(
        "translate", cmd_translate, "decode a source with an encoder-decoder model (greedy)"
    )
    translate.add_argument("source", help="text to encode")
    model_option(translate, "the first encoder-decoder model")
    sampling_options(translate, temperature_help="sample instead of greedy decoding (0: greedy)")
    translate.add_argument("--json", action="store_true", help="print JSON")

    reload = command(
        "reload",
        cmd_reload,
        "make the server rescan its model repository",
        "Prints the model versions added and removed and the packages refused (broken); "
        "exits 1 if a package was refused. Sessions on removed versions keep working.",
    )
    reload.add_argument("--json", action="store_true", help="print JSON, with every model")

    load = command(
        "load",
        cmd_load,
        "load one model from the server's repository",
        "The server rereads the model's config.toml and loads the versions it serves, "
        "bringing back any that `unload` took out; the other models are left as they are. "
        "Exits 1 if a package was refused. With authentication on: admin callers only.",
    )
    load.add_argument("name", help="the model's folder name in the repository")
    load.add_argument("--json", action="store_true", help="print JSON")

    unload = command(
        "unload",
        cmd_unload,
        "take a model, or one version of it, out of service",
        "New sessions on it are refused until `load` brings it back; sessions already "
        "open keep working until closed. With authentication on: admin callers only.",
    )
    unload.add_argument("model", metavar="NAME[:VERSION]", help="without a version: all")
    unload.add_argument("--json", action="store_true", help="print JSON")

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
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the command's usage, not the top level's: the mistake is in its options
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
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
