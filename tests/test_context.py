from __future__ import annotations

import asyncio
import threading

import pytest

from phonebridge.agent.context import CallContext, RecordingCallControl, normalize_transfer_target


def test_for_test_context_records_hang_up_and_transfer() -> None:
    ctx = CallContext.for_test(call_sid="CA1", parameters={"tenant": "luigi"})
    ctx.hang_up()
    ctx.transfer("+1 (555) 010-0100")
    ctx.transfer("sip:manager@pbx.example.com")
    assert isinstance(ctx.control, RecordingCallControl)
    assert ctx.control.requests == [
        ("hang_up", None),
        ("transfer", "+15550100100"),
        ("transfer", "sip:manager@pbx.example.com"),
    ]
    assert ctx.call_sid == "CA1"
    assert ctx.parameters == {"tenant": "luigi"}
    assert ctx.direction == "inbound"


def test_state_is_per_context() -> None:
    a, b = CallContext.for_test(), CallContext.for_test()
    a.state["cart"] = ["margherita"]
    assert b.state == {}


@pytest.mark.parametrize("target", ["5550100", "+0123", "tel:+15550100", "", "sip:", "sip:a b@x", "+1555abc"])
def test_transfer_rejects_bad_targets_and_requests_nothing(target: str) -> None:
    ctx = CallContext.for_test()
    with pytest.raises(ValueError, match="transfer target"):
        ctx.transfer(target)
    assert ctx.control.requests == []  # type: ignore[attr-defined]


def test_normalize_transfer_target() -> None:
    assert normalize_transfer_target(" +44 20 7946 0958 ") == "+442079460958"
    assert normalize_transfer_target("sips:desk@example.com;transport=tls") == "sips:desk@example.com;transport=tls"


async def test_requests_from_a_worker_thread_run_on_the_loop_thread() -> None:
    loop_thread = threading.get_ident()
    seen: list[tuple[str, int]] = []
    done = asyncio.Event()

    class Control:
        def request_hang_up(self) -> None:
            seen.append(("hang_up", threading.get_ident()))
            done.set()

        def request_transfer(self, target: str) -> None:
            seen.append((target, threading.get_ident()))

    ctx = CallContext(call_sid="CA1", stream_sid="MZ1", from_number="+1555", to_number="+1666", _control=Control())

    def sync_handler() -> int:
        ctx.transfer("+15550100")
        ctx.hang_up()
        return threading.get_ident()

    worker = await asyncio.to_thread(sync_handler)
    await done.wait()
    assert worker != loop_thread
    assert seen == [("+15550100", loop_thread), ("hang_up", loop_thread)]
