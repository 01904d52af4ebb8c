"""Records of the shared store (a real redis-server) are checked like imports when read.

The records are changed behind the replicas' backs, in Redis itself, as a compromised
store or a stray program could: a byte flipped, one session's record copied over
another's, fields forged and signed with the replicas' own key, fields deleted, a
replica with other keys. Each read of such a record answers DATA_LOSS naming what
failed; the replicas and every other session carry on.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from statebytes import Export
from support import SHARED_STATE_KEYS, RedisServer, ServerThread, server_config

from rnnserve import Client, DataLoss, FailedPrecondition, NotFound

OWNER = b"ip:127.0.0.1"  # the caller, without authentication: its address


@pytest.fixture(scope="module")
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_server.url) as connection:
        yield connection


@pytest.fixture(scope="module")
def replicas(models_dir: Path, redis_server: RedisServer) -> Iterator[list[Client]]:
    config = server_config(models_dir, session_store=redis_server.url, state_keys=SHARED_STATE_KEYS)
    with (
        ServerThread(config) as a,
        ServerThread(config) as b,
        Client(a.address, timeout=30, retries=0) as one,
        Client(b.address, timeout=30, retries=0) as two,
    ):
        yield [one, two]


def key(session_id: str) -> str:
    return f"rnnserve:session:{session_id}"


def replace_record(store: redis.Redis, session_id: str, data: bytes) -> None:
    """Store ``data`` as the session's record and move its revision on, so that a replica
    holding a copy reads the record again."""
    store.hset(key(session_id), "session", data)
    store.hincrby(key(session_id), "rev", 1)


def stepped(replicas: list[Client], model: str) -> str:
    session = replicas[0].create_session(model)
    replicas[0].step(session.id, [4, 5, 6])
    return session.id


def assert_refused(replicas: list[Client], session_id: str, *named: str) -> None:
    """Every replica answers DATA_LOSS for the session, naming what failed."""
    for replica in replicas:
        with pytest.raises(DataLoss) as refused:
            replica.step(session_id, [4])
        for text in named:
            assert text in refused.value.details


def assert_others_unhurt(replicas: list[Client], model: str) -> None:
    control = stepped(replicas, model)
    assert replicas[1].step(control, [7]).steps == 4
    assert all(replica.health() == "SERVING" for replica in replicas)
    replicas[1].close_session(control)


def test_a_record_changed_in_the_store_is_refused(
    replicas: list[Client], store: redis.Redis, model_name: str
) -> None:
    session = stepped(replicas, model_name)
    record = bytearray(store.hget(key(session), "session") or b"")
    record[len(record) // 2] ^= 0x10
    replace_record(store, session, bytes(record))
    assert_refused(replicas, session, "fails its check", "signature does not verify")
    with pytest.raises(DataLoss, match="closed all the same"):
        replicas[1].close_session(session)
    for replica in replicas:
        with pytest.raises(NotFound):
            replica.step(session, [4])
    assert_others_unhurt(replicas, model_name)


def test_a_record_copied_from_another_session_is_refused(
    replicas: list[Client], store: redis.Redis, model_name: str
) -> None:
    first, second = stepped(replicas, model_name), stepped(replicas, model_name)
    replace_record(store, second, store.hget(key(first), "session") or b"")
    assert_refused(replicas, second, "written for another session or caller")
    assert replicas[1].step(first, [4]).steps == 4  # the original is untouched
    for session in (first, second):
        store.delete(key(session))
    assert_others_unhurt(replicas, model_name)


def record_tail(request_id: bytes, token: int, probability: float) -> bytes:
    """A record's last call as docs/deploy.md lays it out: a Generate's reply of one token."""
    reply = (
        struct.pack("<qBB", 3, 1, 0) + struct.pack("<I", 1) + struct.pack("<Id", token, probability)
    )
    return struct.pack("<H", len(request_id)) + request_id + b"\x01" + reply


def record_head(session_id: str, owner: bytes, idle_ms: int = 600_000) -> bytes:
    return (
        struct.pack("<B", len(session_id)) + session_id.encode()
        + struct.pack("<H", len(owner)) + owner + struct.pack("<Q", idle_ms)
    )  # fmt: skip


FORGED_RECORDS: dict[str, tuple[Any, str]] = {
    "steps = 2^64 - 1": (lambda r, s: r.replace(steps=2**64 - 1), "state.steps"),
    "a NaN in the state": (lambda r, s: r.with_values({(0, 1): np.nan}), "not finite"),
    "h = 3e38": (lambda r, s: r.with_values({(0, 1): 3e38}), "state.h[0, 1]"),
    "an even PCG64 increment": (
        lambda r, s: r.replace(rng_increment=r.rng_increment ^ 1),
        "state.rng.increment",
    ),
    "another owner": (
        lambda r, s: r.replace(record_head=record_head(s, b"user:mallory")),
        "another session or caller",
    ),
    "an idle timeout of 0": (
        lambda r, s: r.replace(record_head=record_head(s, OWNER, 0)),
        "record.idle_timeout_ms",
    ),
    "a reply token outside the vocabulary": (
        lambda r, s: r.replace(record_tail=record_tail(b"g-1", 100, 0.5)),
        "record.reply.tokens[0]",
    ),
    "a reply probability of 2": (
        lambda r, s: r.replace(record_tail=record_tail(b"g-1", 5, 2.0)),
        "record.reply.tokens[0].probability",
    ),
    "kind 1 (an export)": (lambda r, s: r.replace(kind=1), "state.kind"),
}


@pytest.mark.parametrize("case", FORGED_RECORDS)
def test_a_record_forged_with_the_key_is_checked_like_an_import(
    replicas: list[Client], store: redis.Redis, model_name: str, case: str
) -> None:
    """Replicas share their key, so someone holding it could sign any record: every
    field is checked all the same."""
    forge, named = FORGED_RECORDS[case]
    session = stepped(replicas, model_name)
    record = Export.parse(store.hget(key(session), "session") or b"")
    assert record.signed(SHARED_STATE_KEYS) == store.hget(key(session), "session")
    replace_record(store, session, forge(record, session).signed(SHARED_STATE_KEYS))
    assert_refused(replicas, session, named)
    store.delete(key(session))
    assert_others_unhurt(replicas, model_name)


def test_a_record_that_changes_its_model(
    replicas: list[Client], store: redis.Redis, model_name: str
) -> None:
    """A session never changes model: the replica holding it refuses a record that says
    otherwise; one that meets the session first cannot serve a model it lacks."""
    session = stepped(replicas, model_name)
    record = Export.parse(store.hget(key(session), "session") or b"")
    replace_record(store, session, record.replace(model=b"elsewhere").signed(SHARED_STATE_KEYS))
    with pytest.raises(
        DataLoss, match=f"names model elsewhere/1, the session is of {model_name}/1"
    ):
        replicas[0].step(session, [4])
    with pytest.raises(FailedPrecondition, match="elsewhere/1 is not loaded on this replica"):
        replicas[1].step(session, [4])
    store.delete(key(session))
    assert_others_unhurt(replicas, model_name)


def test_a_record_without_its_fields_is_refused(
    replicas: list[Client], store: redis.Redis, model_name: str
) -> None:
    session = stepped(replicas, model_name)
    store.hset(key(session), "rev", "seven")
    assert_refused(replicas, session, "lacks a revision or its signed bytes")
    store.hset(key(session), "rev", "9")
    store.hdel(key(session), "session")
    assert_refused(replicas, session, "lacks a revision or its signed bytes")
    store.delete(key(session))
    assert_others_unhurt(replicas, model_name)


def test_replicas_with_other_keys_cannot_read_each_others_records(
    replicas: list[Client], models_dir: Path, redis_server: RedisServer, model_name: str
) -> None:
    other = server_config(
        models_dir,
        session_store=redis_server.url,
        state_keys="a-different-deployment-key-0123456789",
    )
    with ServerThread(other) as stranger, Client(stranger.address, retries=0) as third:
        mine, theirs = stepped(replicas, model_name), third.create_session(model_name).id
        with pytest.raises(DataLoss, match="same state_keys"):
            third.step(mine, [4])
        with pytest.raises(DataLoss, match="signature does not verify"):
            replicas[1].step(theirs, [4])
        third.close_session(theirs)
    replicas[0].close_session(mine)
