"""The heap frozen around nilearn-heavy steps: what the collector skips, and what it frees."""

from __future__ import annotations

import gc
import weakref

import pytest

from bids_cnm.analyses.frozen_heap import frozen_heap


class _Node:
    """A weakly referenceable object that can sit in a reference cycle."""

    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref:
    """A two-object cycle no name refers to: only the cycle collector frees it."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def unfrozen():
    """Start from an unfrozen heap (an earlier test's run may have frozen it), as found after."""
    was = gc.get_freeze_count()
    gc.unfreeze()
    yield
    if was:
        gc.freeze()


def test_objects_from_before_the_block_are_skipped_then_freed_after_it(unfrozen):
    old = _cycle()
    with frozen_heap():
        assert gc.get_freeze_count() > 0
        gc.collect()
        # the cycle was garbage already, but frozen: a collection in the block skips it
        assert old() is not None
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert old() is None


def test_garbage_made_inside_the_block_is_still_collected_there(unfrozen):
    with frozen_heap():
        new = _cycle()
        gc.collect()
        assert new() is None  # the memory nilearn's collections mean to free is freed


def test_nested_blocks_freeze_again_and_only_the_outermost_unfreezes(unfrozen):
    with frozen_heap():
        outer = gc.get_freeze_count()
        made_between = _cycle()  # like the modules an analysis imports inside the block
        with frozen_heap():
            assert gc.get_freeze_count() > outer
            gc.collect()
            assert made_between() is not None
        assert gc.get_freeze_count() > outer  # still frozen: the outer block goes on
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert made_between() is None


def test_a_heap_frozen_by_the_application_is_left_frozen(unfrozen):
    gc.freeze()
    before = gc.get_freeze_count()
    with frozen_heap():
        _cycle()
    assert gc.get_freeze_count() >= before > 0


def test_the_block_unfreezes_when_it_raises(unfrozen):
    with pytest.raises(RuntimeError), frozen_heap():
        raise RuntimeError("a failing step")
    assert gc.get_freeze_count() == 0
    with frozen_heap():  # and the next block starts again from the outermost level
        pass
    assert gc.get_freeze_count() == 0


def test_a_child_forked_inside_a_block_unfreezes_after_its_own(unfrozen):
    """nipype's workers fork inside the run's block and never see it end: their own
    first block is the outermost, and unfreezes the heap when it ends."""
    import os

    with frozen_heap():
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its freeze counts through the pipe
            try:
                inside = gc.get_freeze_count() > 0
                with frozen_heap():
                    pass
                os.write(write, f"{inside} {gc.get_freeze_count()}".encode())
            finally:
                os._exit(0)
        os.close(write)
        reported = os.read(read, 100).decode()
        os.close(read)
        os.waitpid(pid, 0)
        assert gc.get_freeze_count() > 0  # the parent's block goes on
    assert reported == "True 0"
    assert gc.get_freeze_count() == 0
