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
