"""Typing of the public generics (STYLE 8): mypy --strict proves ``ask`` returns ``R``."""

from __future__ import annotations

import pathlib

import pytest
from mypy import api

CASES = pathlib.Path(__file__).parent / "actors" / "typing_ask.py"


@pytest.mark.slow
def test_ask_returns_the_reply_type_and_wrong_messages_are_rejected() -> None:
    """mypy --strict accepts tests/actors/typing_ask.py: ``await ref.ask(Balance())`` is
    ``int``, and every wrong message it marks is reported (no unused ignore)."""
    stdout, stderr, status = api.run(
        [
            "--strict",
            "--warn-unused-ignores",
            "--no-error-summary",
            "--show-error-codes",
            str(CASES),
        ]
    )
    assert status == 0, stdout + stderr


@pytest.mark.slow
def test_the_type_check_can_fail(tmp_path: pathlib.Path) -> None:
    """The check above is not vacuous: a wrong reply type is reported."""
    case = tmp_path / "wrong.py"
    case.write_text(
        "from typing import assert_type\n"
        "import fiefdom\n"
        "class Balance(fiefdom.Request[int]): ...\n"
        "async def f(ref: fiefdom.ActorRef[Balance]) -> None:\n"
        "    assert_type(await ref.ask(Balance()), str)\n"
    )
    stdout, _, status = api.run(["--strict", "--no-error-summary", str(case)])
    assert status == 1
    assert "assert-type" in stdout


DOMAIN_JOBS = pathlib.Path(__file__).parent / "storage" / "typing_domain_jobs.py"


@pytest.mark.slow
def test_a_domain_jobs_actor_is_typed_as_present() -> None:
    """mypy --strict accepts tests/storage/typing_domain_jobs.py: a DomainJob handler's
    ``ctx.actor`` is its ``DomainJobContext[A]``'s ``A`` and its methods are called
    without an assert, older handlers still register, and every mistake it marks (a
    plain job's possibly-None actor, a domain context for a plain kind) is reported
    (no unused ignore)."""
    stdout, stderr, status = api.run(
        [
            "--strict",
            "--warn-unused-ignores",
            "--no-error-summary",
            "--show-error-codes",
            str(DOMAIN_JOBS),
        ]
    )
    assert status == 0, stdout + stderr


@pytest.mark.slow
def test_a_plain_jobs_actor_is_refused(tmp_path: pathlib.Path) -> None:
    """The check above is not vacuous: calling a method of a plain job's ``ctx.actor``
    is reported (it may be None), and so is registering a plain kind with a handler
    that expects a DomainJobContext."""
    case = tmp_path / "plain.py"
    case.write_text(
        "from typing import Any\n"
        "import fiefdom\n"
        "class Doc(fiefdom.Actor[Any]):\n"
        "    async def receive(self, msg: Any) -> None: ...\n"
        "    def bump(self) -> None: ...\n"
        "class Plain(fiefdom.Job):\n"
        "    options = fiefdom.JobOptions(kind='plain')\n"
        "async def plain(job: Plain, ctx: fiefdom.JobContext[Doc]) -> None:\n"
        "    ctx.actor.bump()\n"
        "async def expects(job: Plain, ctx: fiefdom.DomainJobContext[Doc]) -> None:\n"
        "    ctx.actor.bump()\n"
        "def setup(engine: fiefdom.JobEngine) -> None:\n"
        "    engine.register(Plain, expects)\n"
    )
    stdout, _, status = api.run(["--strict", "--no-error-summary", "--show-error-codes", str(case)])
    assert status == 1
    assert 'Item "None" of "Doc | None" has no attribute "bump"  [union-attr]' in stdout, stdout
    assert 'Value of type variable "DJ" of "register" of "JobEngine" cannot be "Plain"' in stdout
