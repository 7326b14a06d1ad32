"""The stream guard's pure rules: per-call tokens, what a `start` must prove, the idle deadlines (time is a
parameter: no waiting), and sparse logging of repeated refusals."""

from __future__ import annotations

import hashlib
import hmac

import pytest

import phonebridge.twilio.protocol as twilio
from phonebridge.errors import ConfigError
from phonebridge.twilio.signatures import STREAM_TOKEN_PARAMETER, StreamTokens
from phonebridge.twilio.stream_guard import IdleWatch, SparseLog, StreamGuard, agent_parameters

ACCOUNT = "AC" + "1" * 32
CALL = "CA" + "2" * 32
OTHER_CALL = "CA" + "3" * 32
SECRET = "auth-token"


def independent_token(call_sid: str, account_sid: str, secret: str = SECRET) -> str:
    message = f"phonebridge-stream-v1\0{account_sid}\0{call_sid}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def start(call_sid: str = CALL, account_sid: str = ACCOUNT, **params: str) -> twilio.Start:
    return twilio.Start(sequence_number=1, stream_sid="MZ" + "4" * 32, account_sid=account_sid, call_sid=call_sid,
                        tracks=("inbound",), custom_parameters=params, encoding="audio/x-mulaw", sample_rate=8000,
                        channels=1)


def test_a_token_is_an_hmac_sha256_over_the_account_and_the_call() -> None:
    tokens = StreamTokens(SECRET)
    assert tokens.issue(CALL, ACCOUNT) == independent_token(CALL, ACCOUNT)
    assert tokens.valid(CALL, ACCOUNT, independent_token(CALL, ACCOUNT))


def test_any_instance_with_the_same_secret_verifies_a_token_another_issued() -> None:
    issued = StreamTokens(SECRET).issue(CALL, ACCOUNT)
    assert StreamTokens(SECRET).valid(CALL, ACCOUNT, issued)  # no state shared but the secret
    assert not StreamTokens("another-secret").valid(CALL, ACCOUNT, issued)


@pytest.mark.parametrize("call_sid, account_sid, token", [
    (OTHER_CALL, ACCOUNT, independent_token(CALL, ACCOUNT)),  # another call's token
    (CALL, "AC" + "9" * 32, independent_token(CALL, ACCOUNT)),  # another account
    (CALL, ACCOUNT, independent_token(CALL, ACCOUNT)[:-1]),  # truncated
    (CALL, ACCOUNT, independent_token(CALL, ACCOUNT).upper()),  # not what was issued
    (CALL, ACCOUNT, " " + independent_token(CALL, ACCOUNT)),  # whitespace is not trimmed
    (CALL, ACCOUNT, independent_token(CALL, ACCOUNT) + "\n"),
    (CALL.lower(), ACCOUNT, independent_token(CALL, ACCOUNT)),  # callSids are compared exactly too
    (CALL, ACCOUNT, ""),
    (CALL, ACCOUNT, None),
    (CALL, ACCOUNT, "\u00e9" * 64),  # non-ASCII is compared, not an exception
    ("", ACCOUNT, independent_token("", ACCOUNT)),  # a start without a callSid opens nothing
])
def test_a_token_for_anything_else_is_invalid(call_sid: str, account_sid: str, token: str | None) -> None:
    assert not StreamTokens(SECRET).valid(call_sid, account_sid, token)


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ConfigError):
        StreamTokens("")


def test_the_guard_accepts_only_our_account_and_the_call_s_own_token() -> None:
    guard = StreamGuard(StreamTokens(SECRET), ACCOUNT)
    good = {STREAM_TOKEN_PARAMETER: independent_token(CALL, ACCOUNT)}
    assert guard.refusal(start(**good)) is None
    assert guard.refusal(start(OTHER_CALL, **good)) == "bad_token"
    assert guard.refusal(start(CallSid=CALL)) == "missing_token"
    other = "AC" + "9" * 32
    assert guard.refusal(start(account_sid=other, **{STREAM_TOKEN_PARAMETER: independent_token(CALL, other)})) == (
        "wrong_account"
    )
    # Without TWILIO_ACCOUNT_SID the token alone decides (it covers the account the webhook named).
    assert StreamGuard(StreamTokens(SECRET)).refusal(
        start(account_sid=other, **{STREAM_TOKEN_PARAMETER: independent_token(CALL, other)})
    ) is None
    assert StreamGuard().refusal(start()) is None  # validation off: nothing is enforced


def test_the_agent_never_sees_the_token() -> None:
    event = start(CallSid=CALL, From="+15550100", **{STREAM_TOKEN_PARAMETER: "t"})
    assert agent_parameters(event) == {"CallSid": CALL, "From": "+15550100"}


def test_a_socket_must_start_within_the_start_timeout_whatever_it_sends_before() -> None:
    watch = IdleWatch(10.0, 15.0, now=100.0)
    watch.on_frame(105.0)  # frames before start do not move the deadline
    assert watch.deadline() == 110.0
    assert watch.expired(109.999) is None
    assert watch.expired(110.0) == "no_start"


def test_a_started_stream_must_keep_sending_frames() -> None:
    watch = IdleWatch(10.0, 15.0, now=0.0)
    watch.on_start(3.0)
    assert watch.expired(17.9) is None and watch.deadline() == 18.0
    watch.on_frame(17.0)
    assert watch.expired(31.9) is None
    assert watch.expired(32.0) == "media_timeout"


def test_repeated_refusals_are_logged_first_then_once_a_minute_with_the_count() -> None:
    gate = SparseLog(first=2, every_s=60.0)
    logged = [n for n, now in enumerate([0.0, 1.0, 2.0, 30.0, 61.0, 62.0, 125.0], start=1) if gate.should_log(now)]
    assert logged == [1, 2, 5, 7]
    assert gate.count == 7


# -- one stream per callSid on an instance (a replayed `start` carries a genuine token) ---------------------

def guarded() -> StreamGuard:
    return StreamGuard(StreamTokens(SECRET), ACCOUNT)


def genuine(call_sid: str = CALL) -> twilio.Start:
    return start(call_sid, **{STREAM_TOKEN_PARAMETER: independent_token(call_sid, ACCOUNT)})


def test_a_second_stream_for_a_live_call_is_refused_even_with_its_genuine_token() -> None:
    guard = guarded()
    assert guard.refusal(genuine()) is None
    assert guard.refusal(genuine()) == "duplicate_stream"  # the same start replayed on another socket
    assert guard.refusal(genuine(OTHER_CALL)) is None  # other calls are not affected


def test_a_call_whose_stream_ended_does_not_stream_again_on_this_instance() -> None:
    guard = guarded()
    assert guard.refusal(genuine()) is None
    guard.release(CALL)
    assert guard.refusal(genuine()) == "replayed_stream"


def test_a_refused_start_claims_nothing_and_releasing_an_unclaimed_call_is_harmless() -> None:
    guard = guarded()
    assert guard.refusal(start(CALL, **{STREAM_TOKEN_PARAMETER: "forged"})) == "bad_token"
    guard.release(OTHER_CALL)
    assert guard.refusal(genuine()) is None


def test_the_memory_of_ended_calls_is_bounded() -> None:
    guard = StreamGuard(StreamTokens(SECRET), ACCOUNT, remember_ended=3)
    sids = ["CA" + f"{n:032d}" for n in range(5)]
    for sid in sids:
        assert guard.refusal(genuine(sid)) is None
        guard.release(sid)
    assert guard.claims.ended_count() == 3
    assert guard.refusal(genuine(sids[0])) is None  # forgotten: the oldest went first
    assert guard.refusal(genuine(sids[-1])) == "replayed_stream"


def test_without_enforcement_nothing_is_claimed() -> None:
    guard = StreamGuard()
    assert guard.refusal(genuine()) is None and guard.refusal(genuine()) is None
