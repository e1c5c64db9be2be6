"""Bound glibc's malloc arenas in the auth server, so that its RSS levels off.

An argon2id check allocates its whole memory cost (19 MiB by default) in the thread that runs
it. glibc gives each thread an arena of its own (up to 8 per core), and a block that size,
once freed, stays in its arena for the next allocation there: every further worker thread that
ever hashes keeps another 19 MiB. trio's thread cache hands the hashes and the SQLite calls to
whichever idle thread it has, so the set of threads that have hashed only grows. Seen in
`make soak` (issue 9): each auth server grew in 19 MiB steps, 36 -> 93 MiB in 10 minutes. The
same pattern alone (40 checks and 40 other thread calls at a time, 2 hashing slots, six
rounds, tests/authsvc/test_arenas.py): +191 MiB above the base unbounded, still rising; +77
MiB (four blocks) with the arenas capped at the hashing slots, and no more however long it
runs. Capping them (``mallopt(M_ARENA_MAX)``, what ``MALLOC_ARENA_MAX`` sets) keeps what an
auth server holds to at most (slots x slots x memory cost) above its base: each arena can hold
the blocks of every slot. In the soak they levelled off at 93 MiB (36 + 3 blocks).
On a libc without ``mallopt`` (musl, macOS) nothing is done and ``False`` says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # glibc's malloc.h


def cap_malloc_arenas(arenas: int) -> bool:
    """Let malloc use at most ``arenas`` arenas; True when the C library took it."""
    if arenas < 1:
        raise ValueError("arenas must be at least 1")
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
