"""Poison values over the wire, on both dialects: every numeric and time field of every
request (the ``id`` of each, and each request's own numbers, down to the numbers inside
an actor message or a job's arguments) is sent negative, zero, fractional, huge, 2**63,
-2**63-1, past 64 bits, out of float range, NaN and Infinity (MessagePack), and of the
wrong type, in JSON text frames and MessagePack binary frames. Each frame gets one
typed answer, never ``internal``: a value past its bounds is ``invalid_message`` naming
the field, a well-formed request its reply or a typed error. Afterwards the daemon lists
every job, none damaged (GUARANTEES 001/2 found by attack)."""

from __future__ import annotations

import collections
import copy
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from chaos_helpers import HANG_GUARD, control, http_get, logged_errors, wait_until
from daemon_harness import TOKENS, TOKENS_TOML, DaemonProcess, write_config
from hosted_app import Deposit, Increment, Nap

from fiefdom.protocol import REQUIRED_ROLE, ClientMessage, ErrorCode
from fiefdom.storage import open_store

RANK = {"read": 0, "operate": 1, "admin": 2}
SENTINEL = "\x00poison\x00"

# (label, the JSON text of the value)
JSON_POISONS: list[tuple[str, str]] = [
    ("-1", "-1"),
    ("0", "0"),
    ("-0.0", "-0.0"),
    ("0.5", "0.5"),
    ("1.5", "1.5"),
    ("-32769", "-32769"),
    ("32768", "32768"),
    ("2**31", "2147483648"),
    ("2**63-1", "9223372036854775807"),
    ("2**63", "9223372036854775808"),
    ("2**64-1", "18446744073709551615"),
    ("2**64", "18446744073709551616"),
    ("-2**63", "-9223372036854775808"),
    ("-2**63-1", "-9223372036854775809"),
    ("10**30", "1" + "0" * 30),
    ("1e308", "1e308"),
    ("-1e308", "-1e308"),
    ("1e400", "1e400"),
    ("-1e400", "-1e400"),
    ("5e-324", "5e-324"),
    ('"1"', '"1"'),
    ('"NaN"', '"NaN"'),
    ('"Infinity"', '"Infinity"'),
    ("true", "true"),
    ("false", "false"),
    ("null", "null"),
    ("[]", "[]"),
    ("{}", "{}"),
    ("[1]", "[1]"),
]

# (label, the value); MessagePack has no integer past 64 bits, so -2**63-1 and 2**64
# are sent as the nearest values it can carry and as floats.
MSGPACK_POISONS: list[tuple[str, object]] = [
    ("-1", -1),
    ("0", 0),
    ("-0.0", -0.0),
    ("0.5", 0.5),
    ("1.5", 1.5),
    ("-32769", -32769),
    ("32768", 32768),
    ("2**31", 2**31),
    ("2**63-1", 2**63 - 1),
    ("2**63", 2**63),
    ("2**64-1", 2**64 - 1),
    ("-2**63", -(2**63)),
    ("float(-2**63-1)", float(-(2**63) - 1)),
    ("float(2**64)", float(2**64)),
    ("1e308", 1e308),
    ("-1e308", -1e308),
    ("NaN", math.nan),
    ("Infinity", math.inf),
    ("-Infinity", -math.inf),
    ("5e-324", 5e-324),
    ('"1"', "1"),
    ("bin", b"\x01"),
    ("true", True),
    ("nil", None),
    ("[]", []),
    ("{}", {}),
]


@dataclass(frozen=True)
class Target:
    """A request, the role of the connection it is sent on (one weak enough that a
    well-formed frame of a request with effects is ``forbidden`` rather than run), a
    valid frame, and its numeric and time fields besides ``id`` (dotted paths)."""

    type: str
    role: str
    base: dict[str, Any]
    fields: tuple[str, ...] = ()


TARGETS = [
    Target("hello", "operate", {"version": 1}, ("version",)),
    Target("ping", "read", {}),
    Target("status", "read", {}),
    Target(
        "call",
        "operate",
        {"target": "counter", "message_type": "Increment", "message": {"by": 1}},
        ("timeout", "message.by"),
    ),
    Target(
        "call",
        "operate",
        {
            "target": "accounts",
            "key": "poison",
            "message_type": "Deposit",
            "message": {"amount": 1},
        },
        ("message.amount",),
    ),
    Target("actors.pause", "read", {"target": "counter"}),
    Target("actors.resume", "read", {"target": "counter"}),
    Target("actors.stop", "operate", {"target": "accounts", "key": "nobody"}, ("timeout",)),
    Target("jobs.list", "read", {}, ("after_id", "limit")),
    Target("jobs.get", "read", {"job_id": 1}, ("job_id",)),
    Target("jobs.enqueue", "operate", {"kind": "fail", "args": {}}, ("priority", "delay")),
    # A nap's own number, scheduled far ahead so that no poisoned nap ever runs.
    Target(
        "jobs.enqueue",
        "operate",
        {"kind": "nap", "args": {"seconds": 0.0}, "delay": 1e9},
        ("args.seconds",),
    ),
    Target("jobs.retry", "operate", {"job_id": 1}, ("job_id",)),
    Target("jobs.cancel", "operate", {"job_id": 1}, ("job_id",)),
    Target("queues.list", "read", {}),
    Target("queues.pause", "read", {"queue": "default"}),
    Target("queues.resume", "read", {"queue": "default"}),
    Target("queues.drain", "operate", {"queue": "default"}, ("timeout",)),
    Target("drain", "operate", {}, ("timeout",)),
    Target("subscribe", "read", {"topics": ["actors"]}),
    Target("unsubscribe", "read", {"subscription": 1}, ("subscription",)),
    Target("stop", "operate", {}),
    Target("dump", "operate", {}),
]
# The Struct a Raw field is decoded into by the daemon, by (request, field).
INNER: dict[tuple[str, str], type[msgspec.Struct]] = {
    ("Increment", "message"): Increment,
    ("Deposit", "message"): Deposit,
    ("nap", "args"): Nap,
}
CODES = frozenset(str(c) for c in ErrorCode)
# The role each request needs, as the protocol declares it.
REQUIRED = {str(t.__struct_config__.tag): str(role) for t, role in REQUIRED_ROLE.items()}


@dataclass
class Case:
    target: Target
    field: str
    label: str
    binary: bool
    data: bytes
    frame_id: int | None  # the id the answer must name (None when the frame's is invalid)
    codes: frozenset[str] | None  # the error codes allowed, None: any reply or typed error
    path: str | None = None  # the field a refusal must name


def _valid_id(raw: bytes, binary: bool) -> bool:
    """Whether ``raw`` (an encoded value) is an id the protocol takes: a ping carrying
    it decodes. An answer names the frame's id exactly when it is one."""
    if binary:
        ping = b"\x82\xa4type\xa4ping\xa2id" + raw  # {"type": "ping", "id": <raw>}
        decode: Any = msgspec.msgpack.decode
    else:
        ping = b'{"type": "ping", "id": ' + raw + b"}"
        decode = msgspec.json.decode
    try:
        decode(ping, type=ClientMessage)
    except msgspec.DecodeError:
        return False
    return True


def _expect(
    target: Target, field: str, data: bytes, inner: bytes | None, binary: bool, raw_id: bytes
) -> Case:
    """The answer the protocol prescribes for ``data`` (``inner``: the encoded actor
    message or job arguments holding the poison, when that is where it is; ``raw_id``:
    the frame's id as encoded)."""
    decode: Any = msgspec.msgpack.decode if binary else msgspec.json.decode
    value = msgspec.msgpack.decode(data) if binary else json.loads(data)
    frame_id = value["id"] if _valid_id(raw_id, binary) else None
    case = Case(target, field, "", binary, data, frame_id, None)
    try:
        decode(data, type=ClientMessage)
    except msgspec.ValidationError:
        if field == "id":
            case.codes = frozenset({"invalid_message", "invalid_frame"})
        else:
            case.codes, case.path = frozenset({"invalid_message"}), f"$.{field}"
        return case
    if RANK[target.role] < RANK[REQUIRED[target.type]]:
        case.codes = frozenset({"forbidden"})
        return case
    if inner is not None:
        outer = field.partition(".")[0]
        owner = target.base.get("message_type", target.base.get("kind"))
        try:
            decode(inner, type=INNER[(str(owner), outer)])
        except msgspec.DecodeError:
            case.codes, case.path = frozenset({"invalid_message"}), f"$.{field}"
    return case


def _set(frame: dict[str, Any], path: str, value: object) -> None:
    *parents, last = path.split(".")
    node = frame
    for part in parents:
        node = node[part]
    node[last] = value


def cases() -> list[Case]:
    out: list[Case] = []
    n = 100
    for target in TARGETS:
        for field in ("id", *target.fields):
            for binary in (False, True):
                poisons: list[tuple[str, object]] = [*(MSGPACK_POISONS if binary else JSON_POISONS)]
                for label, poison in poisons:
                    n += 1
                    frame = copy.deepcopy({"type": target.type, "id": n, **target.base})
                    _set(frame, field, poison if binary else SENTINEL)
                    outer, _, nested = field.partition(".")
                    if binary:
                        data = msgspec.msgpack.encode(frame)
                        inner = msgspec.msgpack.encode(frame[outer]) if nested else None
                    else:
                        raw = json.dumps(SENTINEL)
                        data = json.dumps(frame).replace(raw, str(poison)).encode()
                        inner = (
                            json.dumps(frame[outer]).replace(raw, str(poison)).encode()
                            if nested
                            else None
                        )
                    encoded_id = poison if field == "id" else n
                    raw_id = (
                        msgspec.msgpack.encode(encoded_id) if binary else str(encoded_id).encode()
                    )
                    case = _expect(target, field, data, inner, binary, raw_id)
                    case.label = label
                    out.append(case)
    return out


@pytest.fixture
def daemon(store_url: str, tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon on the test's store with a token of each role."""
    config = write_config(
        tmp_path / "daemon",
        extra=f"[store]\nurl = {json.dumps(store_url)}\n[jobs]\npoll_interval = 0.1\n",
        control=TOKENS_TOML,
    )
    proc = DaemonProcess(config, token=TOKENS["admin"])
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


async def _answer(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next frame that is not a subscription's event."""
    while True:
        msg = await ws.receive()
        if msg.type is aiohttp.WSMsgType.BINARY:
            frame: dict[str, Any] = msgspec.msgpack.decode(msg.data)
        elif msg.type is aiohttp.WSMsgType.TEXT:
            frame = json.loads(msg.data)
        else:
            raise AssertionError(f"the connection ended: {msg}")
        if frame.get("type") not in ("event", "dropped"):
            return frame


def _judge(case: Case, answer: dict[str, Any]) -> str | None:
    """What is wrong with ``answer`` to ``case``, or None."""
    if answer.get("id") != case.frame_id:
        return f"answer names id {answer.get('id')!r}, not {case.frame_id!r}"
    if answer.get("type") == "error":
        code = answer.get("code")
        if code == "internal" or code not in CODES:
            return f"untyped error {code!r}: {answer.get('message')}"
        if case.codes is not None and code not in case.codes:
            return f"error {code!r}, expected {sorted(case.codes)}: {answer.get('message')}"
        if case.path is not None and answer.get("details", {}).get("path") != case.path:
            return f"refusal names {answer.get('details')}, expected path {case.path}"
        return None
    if case.codes is not None:
        return f"answered {answer.get('type')!r}, expected an error in {sorted(case.codes)}"
    return None


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_poison_values_get_typed_errors_and_commit_nothing_that_breaks_a_listing(
    daemon: DaemonProcess, store_url: str, backend: str, figures: Any
) -> None:
    """Every request's numbers poisoned: typed answers only, nothing damaged commits (001/2)."""
    all_cases = cases()
    problems: list[str] = []
    answers: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    headers = {role: {"Authorization": f"Bearer {TOKENS[role]}"} for role in ("read", "operate")}
    async with aiohttp.ClientSession() as session:
        sockets = {
            role: await session.ws_connect(
                daemon.ws_url, headers=headers[role], max_msg_size=64 << 20
            )
            for role in headers
        }
        try:
            for case in all_cases:
                ws = sockets[case.target.role]
                if case.binary:
                    await ws.send_bytes(case.data)
                else:
                    await ws.send_str(case.data.decode())
                with anyio.fail_after(HANG_GUARD):
                    answer = await _answer(ws)
                kind = answer.get("type")
                answers[f"error:{answer.get('code')}" if kind == "error" else str(kind)] += 1
                wrong = _judge(case, answer)
                if wrong is not None:
                    encoding = "msgpack" if case.binary else "json"
                    problems.append(
                        f"{case.target.type} {case.field}={case.label} ({encoding}): {wrong}"
                    )
        finally:
            for ws in sockets.values():
                await ws.close()
    poisons_s = time.monotonic() - started

    async with control(daemon.url, daemon.token) as ctl:
        # queues.drain paused the queue: give it back, then prove the engine still runs.
        assert (await ctl.request("queues.resume", queue="default"))["type"] == "ack"
        listed: list[dict[str, Any]] = []
        while True:
            after = listed[-1]["id"] if listed else 0
            page = await ctl.request("jobs.list", after_id=after, limit=10_000)
            assert page["type"] == "jobs.reply", page
            if not page["jobs"]:
                break
            listed += page["jobs"]
        damaged = [j for j in listed if j.get("damaged")]
        reply = await ctl.request("jobs.enqueue", kind="nap", args={"seconds": 0.0})
        assert reply["type"] == "enqueue.reply", reply
        job_id = reply["enqueued"]["id"]

        async def completed() -> bool:
            return bool(
                (await ctl.request("jobs.get", job_id=job_id))["job"]["state"] == "completed"
            )

        await wait_until(completed, what="a job enqueued after the poison to complete")
    ready = await http_get(daemon.url + "/readyz", daemon.token)
    async with open_store(store_url) as store:
        in_store = await store.list_jobs(limit=100_000)
    errors = logged_errors(daemon)
    figures(
        dialect=backend,
        frames=len(all_cases),
        refusals_expected=sum(1 for c in all_cases if c.codes is not None),
        answers=dict(sorted(answers.items())),
        internal=answers.get("error:internal", 0),
        wrong_answers=len(problems),
        jobs_committed=len(listed),
        damaged_rows=len(damaged) + sum(1 for j in in_store if j.damaged),
        daemon_errors_logged=len(errors),
        poison_s=round(poisons_s, 2),
    )
    assert not problems, f"{len(problems)} wrong answers:\n" + "\n".join(problems[:40])
    assert not damaged
    assert not [j for j in in_store if j.damaged]
    assert ready[0] == 200, ready
    assert not errors, "\n".join(errors[:20])


@pytest.mark.slow
@pytest.mark.dialect("sqlite")  # the encoding at fault is shared by both dialects
async def test_a_non_finite_float_in_job_arguments_is_refused_or_runs(
    daemon: DaemonProcess, figures: Any
) -> None:
    """NaN/Infinity in a job's float argument is refused, or the job runs as sent (001/2)."""
    outcomes: dict[str, str] = {}
    headers = {"Authorization": f"Bearer {TOKENS['operate']}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.ws_connect(daemon.ws_url) as ws,
        control(daemon.url, daemon.token) as ctl,
    ):
        for n, (label, value) in enumerate(
            [("NaN", math.nan), ("Infinity", math.inf), ("-Infinity", -math.inf)], start=1
        ):
            frame = {"type": "jobs.enqueue", "id": n, "kind": "nap", "args": {"seconds": value}}
            await ws.send_bytes(msgspec.msgpack.encode(frame))
            with anyio.fail_after(HANG_GUARD):
                answer = await _answer(ws)
            if answer["type"] == "error":
                outcomes[label] = f"refused: {answer['code']} {answer.get('details')}"
                continue
            job_id = answer["enqueued"]["id"]

            async def ended(job_id: int = job_id) -> bool:
                state = (await ctl.request("jobs.get", job_id=job_id))["job"]["state"]
                return state in ("completed", "discarded", "cancelled")

            await wait_until(ended, what=f"the {label} nap to end")
            job = (await ctl.request("jobs.get", job_id=job_id))["job"]
            errors = [e["message"] for e in job["errors"]]
            outcomes[label] = f"{job['state']} args={job['args']} {errors}"
    figures(outcomes=outcomes)
    for label, outcome in outcomes.items():
        assert outcome.startswith(("refused: invalid_message", "completed")), (label, outcome)
