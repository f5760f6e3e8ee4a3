"""Keep the garbage collector off the objects a step found when it started.

nilearn calls :func:`gc.collect` each time it reads an image's data
(``nilearn._utils.niimg.safe_get_data``, through ``unmask``, ``apply_mask``,
``load_mask_img``...), to free memory before a copy.  A full collection visits every
object the process tracks: in a worker that has imported nipype, pandas, nilearn and
NiMARE, a few hundred thousand, 0.1-0.25 s per call on the development VM.  An ALE
with its maps, or a plan's ROI overlaps, makes a few dozen such calls: 1-2 s of a
demo run was spent there, none of it freeing anything (the objects are modules,
classes and functions, alive for the whole process).

:func:`gc.freeze` moves every tracked object to a permanent generation that
collections skip; objects created afterwards are collected as usual, so the memory
nilearn means to free is still freed.  The heap is unfrozen when the step ends:
cycles that became garbage before it are collected by the next collection after it.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["frozen_heap"]

_LOCK = threading.Lock()
_depth = 0
_unfreeze = False  # the outermost block froze a heap nobody had frozen before
_inherited = False  # a forked child's heap, frozen by its parent's block


def _after_fork_in_child() -> None:
    """A child forked inside a block (nipype's workers, in the run's block) never sees
    that block end: its own first block becomes the outermost, and the heap its
    parent's block froze is unfrozen when that block ends (garbage from before is then
    collected).  A heap the application froze stays frozen."""
    global _LOCK, _depth, _inherited
    _LOCK = threading.Lock()  # another thread may have held it at the fork
    _inherited = _depth > 0 and _unfreeze
    _depth = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the objects tracked so far for the duration of the block.

    Nested blocks freeze again (what an inner block's imports created joins the
    permanent generation); only the outermost unfreezes.  Objects in the permanent
    generation are never collected while frozen: use it around a bounded step, not
    for a whole long-lived process.  A heap that was frozen before the outermost
    block (by the application) is left frozen.  In a process forked inside a block, the
    first block of its own is the outermost.

    Examples
    --------
    >>> import gc
    >>> with frozen_heap():
    ...     gc.get_freeze_count() > 0
    True
    """
    global _depth, _unfreeze, _inherited
    with _LOCK:
        if _depth == 0:
            _unfreeze = _inherited or gc.get_freeze_count() == 0
            _inherited = False
        _depth += 1
        gc.freeze()
    try:
        yield
    finally:
        with _LOCK:
            _depth -= 1
            if _depth == 0 and _unfreeze:
                gc.unfreeze()
