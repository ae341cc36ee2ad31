"""The control block's record of calls that ended (see taskpool._control)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskpool._control import HELD, ControlBlock


@pytest.fixture
def block() -> Iterator[ControlBlock]:
    b = ControlBlock()
    yield b
    b.close()


def test_a_call_not_begun_has_not_ended(block: ControlBlock) -> None:
    assert not block.ended(0)
    assert not block.ended(1)
    block.begin(1, 1.0, running=False)
    assert not block.ended(2)


def test_a_sync_call_ends_when_it_returns(block: ControlBlock) -> None:
    block.begin(1, 1.0, running=True)
    assert not block.ended(1)
    block.end()
    assert block.ended(1)


def test_a_coroutine_call_ends_when_it_lets_go_of_its_slot(block: ControlBlock) -> None:
    block.hold(0, 1)
    block.begin(1, 1.0, running=False)
    block.hold(1, 2)
    block.begin(2, 1.0, running=False)
    assert not block.ended(1) and not block.ended(2)
    block.release(1)  # the later one ends first
    assert block.ended(2) and not block.ended(1)
    block.hold(1, 3)  # its slot is taken again
    block.begin(3, 1.0, running=False)
    assert not block.ended(3)
    block.release(1)
    assert block.ended(3) and not block.ended(1)
    block.release(0)
    assert block.ended(1)


def test_a_sync_call_that_went_on_as_a_coroutine_has_not_ended(block: ControlBlock) -> None:
    block.begin(1, 1.0, running=True)
    block.hold(0, 1)  # held before end(): never seen ended in between
    block.end()
    assert not block.ended(1)
    block.release(0)
    assert block.ended(1)


def test_every_slot_is_seen_and_the_journal_is_apart(block: ControlBlock) -> None:
    block.hold(HELD - 1, 7)
    block.begin(7, 1.0, running=False)
    assert not block.ended(7)
    assert not block.journaled()
    block.append(0, b"answers")
    assert block.journaled() and block.journal() == b"answers"
    assert not block.ended(7)  # the journal does not reach the slots
    block.clear()
    assert not block.journaled()
    block.release(HELD - 1)
    assert block.ended(7)


def test_the_slots_are_shared_through_the_fd() -> None:
    pool_side = ControlBlock()
    try:
        assert pool_side.fd is not None
        worker_side = ControlBlock(pool_side.fd)  # the same memory, mapped again
        worker_side.hold(3, 5)
        worker_side.begin(5, 1.0, running=False)
        assert not pool_side.ended(5)
        worker_side.release(3)
        assert pool_side.ended(5)
        worker_side._mm.close()
    finally:
        pool_side.close()
