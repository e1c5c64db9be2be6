"""Child processes that die with their launcher: a SIGKILLed ``fleet`` must not leave its
fleet running unsupervised on every port (issue 9: 18 orphans, and the next ``make fleet``
collided with each of them). The same holds one level down: a ``proxy --workers N`` that is
SIGKILLed must not leave its workers serving its port (`proxy.workers`), which is why this
module sits in `httpio`, below both the launcher and the servers.

Linux's ``PR_SET_PDEATHSIG`` (prctl(2)) makes the kernel signal a child when its parent
dies, with no help from either side and nothing for the child to run, so it covers Redis,
which is not ours, as well as our own servers. Its catch is that "parent" means the
*thread* that forked. ``trio.lowlevel.open_process`` forks from trio's worker threads, which
exit after 10 s idle; measured here: a child started that way was SIGKILLed 10.0 s later
with the launcher alive and well. So `start_child` forks on the calling thread, the one
running the launcher's trio loop, which lives as long as the fleet (measured: a child
started so was alive 20 s later, and gone 1.8 ms after its launcher was SIGKILLed).
``subprocess.Popen`` blocks that loop for the fork and exec only (measured on the shared
2-core machine under load: 8-17 ms median per child, about the same as a Popen without the
``preexec_fn``), which a supervisor that starts a child now and then can afford.

The signal is SIGKILL, not SIGTERM: with the launcher gone nobody would escalate a drain that
hangs, and the target is "every child gone within 2 s". The ``preexec_fn`` (run between fork
and exec) makes two system calls: the ``prctl``, then ``getppid`` to catch a launcher that
died before the ``prctl`` (the child then exits at once instead of running orphaned).
Elsewhere than Linux there is no such signal and children outlive a killed launcher; the
launcher's start-up check (`topology.fleet_lock`) then names them.

`Backoff` is the restart delay of a crashing child, for both supervisors
(`topology.supervisor` explains its numbers). `ChildProcess` is what the supervisor needs of a ``trio.Process``: ``pid``,
``returncode``, ``send_signal`` and ``await wait()``, the wait on a pidfd (pidfd_open(2))
that trio's loop watches, so no thread and no polling.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

import trio

# A `proxy --workers N` parent's grace to its workers past their drain, before SIGKILL.
WORKER_KILL_GRACE_S = 5.0
STOP_MARGIN_S = 5.0


def stop_timeout_s(drain_timeout_s: float) -> float:
    """How long whatever supervises a server (the launcher, systemd) waits after SIGTERM
    before SIGKILL: the server's drain (config.json's ``Server.drain_timeout_s``), the grace
    a `proxy --workers` parent gives its workers past it, and a margin: a SIGKILL must not
    cut a drain short. 20 s for the default 10 s drain."""
    return drain_timeout_s + WORKER_KILL_GRACE_S + STOP_MARGIN_S


_PR_SET_PDEATHSIG = 1
_POLL_S = 0.05  # only without pidfds (Linux < 5.3)


def _load_prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_prctl = _load_prctl()


def _die_with_launcher(launcher_pid: int) -> Callable[[], None] | None:
    """The ``preexec_fn`` that ties a child's life to this thread's; None off Linux."""
    prctl = _prctl
    if prctl is None:
        return None
    kill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, kill)
        if os.getppid() != launcher_pid:
            os._exit(70)  # the launcher died before the prctl: do not run orphaned

    return preexec


class ChildProcess:
    """A child started by `start_child`, awaited through a pidfd."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._pidfd: int | None
        try:
            self._pidfd = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        self._lock = trio.Lock()

    def __repr__(self) -> str:
        return f"<ChildProcess {self.pid} returncode={self.returncode}>"

    @property
    def returncode(self) -> int | None:
        """None while running; the exit status, or -N after signal N (as ``Popen``)."""
        return self._popen.poll()

    def send_signal(self, sig: int) -> None:
        self._popen.send_signal(sig)  # a no-op once the child has been reaped

    async def wait(self) -> int:
        async with self._lock:  # one waiter at a time on the pidfd
            while (code := self._popen.poll()) is None:
                if self._pidfd is not None:
                    await trio.lowlevel.wait_readable(self._pidfd)
                else:
                    await trio.sleep(_POLL_S)
            self._close_pidfd()
            return code

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def start_child(
    argv: Sequence[str],
    *,
    output: int,
    env: Mapping[str, str],
    pass_fds: Sequence[int] = (),
) -> ChildProcess:
    """Start ``argv`` in a session of its own (a Ctrl-C at the terminal reaches only the
    launcher), stdout and stderr to ``output``, killed by the kernel if this thread dies.
    OSError if it cannot be started."""
    popen = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(env),
        pass_fds=tuple(pass_fds),
        preexec_fn=_die_with_launcher(os.getpid()),
    )
    return ChildProcess(popen)


class Backoff:
    """Delays between restarts of one crashing child: ``initial_s`` doubling up to
    ``max_s``; a child that stayed up ``reset_after_s`` starts again from ``initial_s``."""

    __slots__ = ("failures", "initial_s", "max_s", "reset_after_s")

    def __init__(
        self, initial_s: float = 0.5, max_s: float = 30.0, reset_after_s: float = 10.0
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.reset_after_s = reset_after_s
        self.failures = 0

    def __repr__(self) -> str:
        return f"<Backoff failures={self.failures} next={self.peek():g}s>"

    def peek(self) -> float:
        return min(self.max_s, self.initial_s * 2.0 ** min(self.failures, 64))

    def next_delay(self, uptime_s: float) -> float:
        """The wait before restarting a child that exited after ``uptime_s`` seconds."""
        if uptime_s >= self.reset_after_s:
            self.failures = 0
        delay = self.peek()
        self.failures += 1
        return delay
