"""Giving the memory of a large answer back to the operating system.

A million-row answer allocates a few hundred MB of small objects for a second or
two and frees them all. Measured with ``bench/memory.py``, none of it stays alive,
yet the allocators keep most of it: CPython's small-object allocator returns a
1 MiB arena only once every object in it is gone, and glibc's ``free`` returns
memory only from the top of its heaps. With ``PYTHONMALLOC=malloc`` every object
comes from glibc, and ``malloc_trim(0)`` hands all of its free pages back, so RSS
falls to within a few MB of the idle size. Under the default allocator it gives
back only glibc's own share (a few MB).

The trim runs after an answer of at least ``TRIM_AFTER_BYTES`` has been sent, on a
worker thread so the event loop keeps serving (it took ~25 ms after 300 MB had
been freed, under a millisecond otherwise), and only on Linux with glibc.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

import trio

#: Body bytes from which an answer is followed by a trim. A small answer frees
#: too little to be worth a pass over the heap, and a busy service answers many.
TRIM_AFTER_BYTES = 4 * 1024 * 1024

Trim = Callable[[], object]


def glibc_malloc_trim() -> Trim | None:
    """The C library's ``malloc_trim(0)`` on glibc; None on any other or platform."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        function = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, ValueError):  # not glibc, or no such symbol
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return lambda: function(0)


class MemoryReleaser:
    """Trims the C heap after large answers: one trim at a time, none skipped.

    An answer that ends while a trim runs asks for one more, since its memory may
    have been freed after that trim passed; it never starts a second one at once.
    """

    def __init__(self, trim: Trim | None = None, threshold: int = TRIM_AFTER_BYTES) -> None:
        self._trim = trim
        self._threshold = threshold
        self._running = False
        self._again = False
        self.trims = 0
        """How many trims ran."""

    @classmethod
    def for_platform(cls) -> MemoryReleaser:
        """A releaser with the platform's trim (a no-op where there is none)."""
        return cls(glibc_malloc_trim())

    async def answered(self, body_bytes: int) -> None:
        """Called once an answer's body has been sent and its memory freed."""
        if self._trim is None or body_bytes < self._threshold:
            return
        if self._running:
            self._again = True
            return
        self._running = True
        try:
            # Shielded: it runs when a request ends, cancelled or not, and it ends.
            with trio.CancelScope(shield=True):
                while True:
                    self._again = False
                    await trio.to_thread.run_sync(self._trim)
                    self.trims += 1
                    if not self._again:
                        break
        finally:
            self._running = False
