"""Close codes: the policy for every code, and the sentences that explain them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxvoice.errors import ConnectionClosed, DaveRequired
from rxvoice.protocol.closecodes import (
    CloseCode,
    ClosePolicy,
    close_error,
    close_policy,
    describe_close,
)

RESUME, NEW_SESSION, FINAL = ClosePolicy.RESUME, ClosePolicy.NEW_SESSION, ClosePolicy.FINAL

EXPECTED: dict[int | None, ClosePolicy] = {
    None: RESUME,
    1000: RESUME,
    1001: RESUME,
    1006: RESUME,
    1011: RESUME,
    3000: RESUME,
    4001: FINAL,
    4002: FINAL,
    4003: NEW_SESSION,
    4004: NEW_SESSION,
    4005: FINAL,
    4006: NEW_SESSION,
    4009: NEW_SESSION,
    4011: NEW_SESSION,
    4012: FINAL,
    4013: RESUME,
    4014: FINAL,
    4015: RESUME,
    4016: FINAL,
    4017: FINAL,
    4020: FINAL,
    4021: FINAL,
    4022: FINAL,
    4000: NEW_SESSION,
    4007: NEW_SESSION,
    4999: NEW_SESSION,
}


@pytest.mark.parametrize(("code", "policy"), EXPECTED.items())
def test_policy(code: int | None, policy: ClosePolicy) -> None:
    assert close_policy(code) is policy


def test_every_close_code_is_covered() -> None:
    assert {int(code) for code in CloseCode} <= set(EXPECTED)
    assert int(CloseCode.DAVE_REQUIRED) == 4017
    assert CloseCode(4022) is CloseCode.CALL_TERMINATED


@pytest.mark.parametrize("code", [*CloseCode, None, 1000, 1006, 4999])
def test_descriptions(code: int | None) -> None:
    text = describe_close(code)
    assert text.endswith(".")
    assert str(code) in text or code is None
    if code is not None and code in set(CloseCode):
        assert CloseCode(code).name in text
    policy_words = {
        RESUME: "resume",
        NEW_SESSION: "new session",
        FINAL: "do not reconnect",
    }
    assert policy_words[close_policy(code)] in text


def test_dave_required_description() -> None:
    text = describe_close(4017)
    assert "requires DAVE" in text
    assert "end-to-end encryption" in text
    assert "max_dave_protocol_version >= 1" in text


def test_close_error() -> None:
    error = close_error(4017)
    assert isinstance(error, DaveRequired)
    assert error.code == 4017
    assert "DAVE" in error.reason
    other = close_error(4014)
    assert type(other) is ConnectionClosed
    assert other.code == 4014
    assert "kicked" in str(other)
    assert type(close_error(None)) is ConnectionClosed


@given(st.integers(-(2**31), 2**31))
def test_policy_is_total(code: int) -> None:
    policy = close_policy(code)
    assert isinstance(policy, ClosePolicy)
    if code < 4000:
        assert policy is RESUME
    assert describe_close(code)
