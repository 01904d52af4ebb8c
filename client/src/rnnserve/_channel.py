"""Everything about the connection, shared by the sync and the asyncio client.

Target parsing, channel options (keepalive, message sizes), TLS and the bearer token live here
so both clients connect identically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from rnnserve import _validate
from rnnserve._version import __version__

DEFAULT_PORT = 50051
# A full distribution over a 1M-word vocabulary is 4 MB of floats; 64 MiB leaves room for
# batches of those without letting a runaway message exhaust memory.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Ping a connection that carries a call every minute so idle streams (an interactive session
# waiting for a keypress) survive NATs and load balancers. No pings without a call: servers
# answer those with GOAWAY "too_many_pings" under gRPC's default policy.
_KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
)

_URI_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.%\w]+\]|[^:\[\]/\s]+)(?::(?P<port>\d+))?$")
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")


def parse_target(address: str) -> str:
    """Normalise `host[:port]` (IPv6 in brackets) to a gRPC target; gRPC URIs pass through.

    The port defaults to 50051. Raises `ValueError` for anything else, so a typo fails here
    with a clear message instead of as an opaque UNAVAILABLE after the connect timeout.
    """
    address = address.strip()
    if address.startswith(_URI_SCHEMES):
        return address
    if "://" in address:
        raise ValueError(
            f"address {address!r}: expected host:port (e.g. 127.0.0.1:50051); "
            "use tls=/--tls for TLS instead of a URL scheme"
        )
    match = _HOST_PORT.match(address)
    if match is None:
        raise ValueError(
            f"address {address!r}: expected host:port, [ipv6]:port or a gRPC URI "
            "such as unix:/path/to/socket"
        )
    port = int(match["port"]) if match["port"] is not None else DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise ValueError(f"address {address!r}: port must be in 1..65535")
    return f"{match['host']}:{port}"


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings: PEM bytes; all optional.

    Without `root_certificates` the system's trust store is used. `certificate_chain` and
    `private_key` (both or neither) present a client certificate for mutual TLS.
    `server_name` overrides the name checked against the server's certificate (for
    connecting by IP address to a server whose certificate names a host).
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("TLS client authentication needs both a certificate and a key")

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TLSConfig:
        """Build the config from PEM files (the CLI's `--tls-ca/--tls-cert/--tls-key`)."""

        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(read(ca), read(cert), read(key), server_name)


@dataclass(frozen=True)
class Connection:
    """A client's validated constructor arguments, shared by the sync and asyncio clients."""

    target: str
    tls: TLSConfig | None
    metadata: tuple[tuple[str, str], ...] | None
    timeout: float | None
    user_agent: str

    @classmethod
    def resolve(
        cls, address: str, timeout: float | None, tls: TLSConfig | bool | None, token: str | None
    ) -> Connection:
        """Validate everything before a channel exists, so mistakes raise `ValueError` early."""
        return cls(
            target=parse_target(address),
            tls=resolve_tls(tls),
            metadata=call_metadata(token),
            timeout=_validate.timeout(timeout),
            user_agent=f"rnnserve-python/{__version__}",
        )

    def open(self) -> grpc.Channel:
        """A blocking-API channel."""
        options = channel_options(self.tls, self.user_agent)
        if self.tls is None:
            return grpc.insecure_channel(self.target, options=options)
        return grpc.secure_channel(self.target, _credentials(self.tls), options=options)

    def open_aio(self) -> grpc.aio.Channel:
        """An asyncio channel; create it inside the event loop that will use it."""
        options = channel_options(self.tls, self.user_agent)
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=options)
        return grpc.aio.secure_channel(self.target, _credentials(self.tls), options=options)

    def deadline(self, timeout: float | None) -> float | None:
        """A call's timeout: its own when given, else the client's default."""
        return self.timeout if timeout is None else _validate.timeout(timeout)


def channel_options(tls: TLSConfig | None, user_agent: str) -> list[tuple[str, Any]]:
    """The options every rnnserve channel is created with."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.primary_user_agent", user_agent),
        *_KEEPALIVE_OPTIONS,
    ]
    if tls is not None and tls.server_name is not None:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """Per-call metadata carrying the bearer token.

    Sent as plain metadata rather than gRPC call credentials, which gRPC refuses to attach
    to insecure channels, so a token also reaches a server on localhost without TLS.
    """
    if token is None:
        return None
    if not _TOKEN_CHARS.match(token):
        raise ValueError("token must be non-empty printable ASCII without spaces")
    return (("authorization", f"Bearer {token}"),)


def resolve_tls(tls: TLSConfig | bool | None) -> TLSConfig | None:
    """`True` means TLS with the system's trust store; `False`/`None` a plaintext channel."""
    if tls is True:
        return TLSConfig()
    if tls is False or tls is None:
        return None
    return tls


def _credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=tls.root_certificates,
        private_key=tls.private_key,
        certificate_chain=tls.certificate_chain,
    )
