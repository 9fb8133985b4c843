"""Work-arounds for bugs in the Qt bindings that would otherwise crash the studio.

PySide6 6.12's `SignalInstance.emit()` returns `True` without taking a reference to it, so every emit
whose result is dropped (all of them) takes one reference from `True`. On Python 3.11, where `True` is
an ordinary object, a few thousand emits (strokes, preview frames, status messages) bring its count to
zero and the interpreter aborts with "bool_dealloc: deallocating True or False". Python 3.12 and later
make `True` and `False` immortal; here we do the same by hand, giving both a reference count that no
session could use up. `studio/document.py` imports this module (every Qt object in the studio lives
beside a Document), and so does `tests/conftest.py` for the whole test process.
"""

from __future__ import annotations

import ctypes
import sys

_HEADROOM = 1 << 40  # a trillion emits: decades of preview frames


def immortalise_bools() -> None:
    """Give True and False a huge reference count (CPython before 3.12 only; later versions need none)."""
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return
    for value in (True, False):
        refcount = ctypes.c_ssize_t.from_address(id(value))  # ob_refcnt is the first field of every object
        if refcount.value < _HEADROOM:
            refcount.value += _HEADROOM


immortalise_bools()
