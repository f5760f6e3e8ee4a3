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
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["frozen_heap"]

_LOCK = threading.Lock()
_depth = 0
_unfreeze = False  # the outermost block froze a heap nobody had frozen before


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the objects tracked so far for the duration of the block.

    Nested blocks freeze again (what an inner block's imports created joins the
    permanent generation); only the outermost unfreezes.  Objects in the permanent
    generation are never collected while frozen: use it around a bounded step, not
    for a whole long-lived process.  A heap that was frozen before the outermost
    block (by the application) is left frozen.

    Examples
    --------
    >>> import gc
    >>> with frozen_heap():
    ...     gc.get_freeze_count() > 0
    True
    """
    global _depth, _unfreeze
    with _LOCK:
        if _depth == 0:
            _unfreeze = gc.get_freeze_count() == 0
        _depth += 1
        gc.freeze()
    try:
        yield
    finally:
        with _LOCK:
            _depth -= 1
            if _depth == 0 and _unfreeze:
                gc.unfreeze()
