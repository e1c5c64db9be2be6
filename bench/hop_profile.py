"""``make bench-hop-profile`` / ``python -m bench.hop_profile``: where one proxied request's
CPU goes, per layer, under one of `bench.hop`'s loads (``--load``: ``wrk -t1 -c50``
keep-alive by default, or ``ab -c20``, a new connection per request).

It starts the target of `bench.hop` named by ``--target`` (our ``proxy`` by default, or the
reference ``relay``) in front of the same nginx backend, warms it up, then measures in
separate windows of ``--seconds`` each, so that no tool disturbs another's figure:

1. CPU per request, with nothing attached: the process's user and system time from
   ``/proc/PID/stat`` over a run of the load, divided by the requests it completed. System
   time is the kernel's work on our behalf: the syscalls and the loopback TCP stack under
   them (this kernel has no IRQ time accounting, so softirq work lands there too).
2. Where it goes: ``py-spy record --native --format raw`` (collapsed stacks, native frames
   included) during another run. `classify` puts each sample in one layer: a syscall (the
   sample stood in ``write``, ``read``, ``poll``, ``epoll_ctl``... in libc), the cyclic GC,
   h11 (frames of the mypyc-compiled h11, or of ``h11/`` when pure), trio (scheduling and
   cancel scopes, its epoll bookkeeping, its socket wrappers), or our own code by component
   (routing, header rewriting, request ids, limiters, balancing and health, the server loop,
   the upstream pool...). The syscall layers divide window 1's system time between them,
   the others its user time (`layer_rows` says why py-spy's raw shares are not used).
3. ``--strace``: syscalls per request, ``strace -c -f`` during a run (the counts are exact;
   strace slows the process, so its times are not used).
4. ``--perf``: ``perf record -e cpu-clock`` (on-CPU samples only), split by shared object
   (kernel, libpython, the compiled h11, libc): the check on windows 1 and 2.
5. ``--speedscope``: a py-spy profile for humans (speedscope.app).

py-spy must be allowed to ptrace the target (root, or ``kernel.yama.ptrace_scope=0``). The
raw profile, the speedscope file and a JSON summary go to
``bench/results/hop-profile-<target>-<load>-<time>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import hop
from bench.hop_lab import Target, lab_running
from bench.parse import BenchResult, format_rows, parse_ab, parse_wrk
from httpio.accel import STATE as ACCEL_STATE
from httpio.protocol import H11_NAME

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")
SAMPLE_RATE_HZ = 250
WARMUP_S = 3

# libc wrappers a sample can stand in, with what the call is for in this process.
SYSCALLS = {
    "write": "send",
    "send": "send",
    "sendmsg": "send",
    "read": "recv",
    "recv": "recv",
    "recvmsg": "recv",
    "poll": "poll (pooled connection check)",
    "epoll_ctl": "epoll_ctl (trio re-registration)",
    "epoll_wait": "epoll_wait",
    "close": "close",
    "accept4": "accept",
    "connect": "connect",
    "socket": "socket",
    "getpeername": "getpeername",
    "setsockopt": "setsockopt",
    "shutdown": "shutdown",
}

# Our code, by component: (path prefix, function names or None for any) -> component.
COMPONENTS: tuple[tuple[str, frozenset[str] | None, str], ...] = (
    ("httpio/trace.py", frozenset({"request_id_of", "new_request_id"}), "request ids"),
    ("proxy/forwarding.py", None, "header rewriting"),
    ("proxy/routing.py", None, "routing"),
    ("proxy/hop.py", None, "routing"),
    ("httpio/limits.py", None, "limiters"),
    ("httpio/retry_budget.py", None, "retry budget"),
    ("proxy/retry.py", None, "retry budget"),
    ("httpio/balance.py", None, "balancing + health bookkeeping"),
    ("httpio/health.py", None, "balancing + health bookkeeping"),
    ("proxy/auth", None, "token check"),
    ("authsvc/", None, "token check"),
    ("proxy/cache/", None, "cache"),
    ("proxy/app.py", None, "request path (proxy/app.py)"),
    ("httpio/server.py", None, "server loop (httpio/server.py)"),
    ("httpio/upstream.py", None, "upstream pool (httpio/upstream.py)"),
    ("httpio/sockio.py", None, "socket calls, Python side (httpio/sockio.py)"),
    ("httpio/", None, "other httpio"),
    ("proxy/", None, "other proxy"),
    ("bench/hop_relay.py", None, "the relay's own code"),
)

_FRAME = re.compile(r"^(?P<name>.*) \((?P<where>[^()]*)\)$")


@dataclass(frozen=True, slots=True)
class Frame:
    name: str
    where: str  # "path.py:line" for Python, the library for native code

    @property
    def python_path(self) -> str | None:
        path, colon, line = self.where.rpartition(":")
        if colon and line.isdigit() and path.endswith(".py"):
            return path
        return None

    @property
    def is_h11(self) -> bool:
        where = self.where
        return (
            "__mypyc" in where
            or "__native_" in where
            or self.name.startswith("CPyDef_")
            or (self.python_path or "").startswith("h11/")
        )

    @property
    def function(self) -> str:
        return self.name.rpartition(".")[2]


def parse_raw(text: str) -> list[tuple[list[Frame], int]]:
    """py-spy's raw format: one stack a line, root first, ``;``-separated, then a count."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            match = _FRAME.match(part)
            frames.append(Frame(match["name"], match["where"]) if match else Frame(part, ""))
        stacks.append((frames, int(count)))
    return stacks


def component_of(frame: Frame) -> str | None:
    path = frame.python_path
    if path is None:
        return None
    for prefix, functions, component in COMPONENTS:
        if path.startswith(prefix) and (functions is None or frame.function in functions):
            return component
    return None


_SOCKIO = "socket calls, Python side (httpio/sockio.py)"
_GC = frozenset({"gc_collect_main", "gc_collect_with_callback", "gc_collect_generations"})


def classify(frames: Sequence[Frame]) -> tuple[str, str]:
    """(layer, detail) of one sample. The layer is what the sample's innermost frames were
    doing; the detail names the innermost function of ours above it (who asked), past
    `httpio.sockio`'s wrappers so that a send says whether the server or the pool made it."""
    ours = [f for f in reversed(frames) if component_of(f) is not None]
    asker = next((f for f in ours if component_of(f) != _SOCKIO), ours[0] if ours else None)
    caller = asker.name if asker is not None else "-"
    if any(f.name in _GC for f in frames):
        return "interpreter: cyclic garbage collector", caller
    for frame in reversed(frames):
        if frame.python_path is None and frame.where.startswith("libc"):
            purpose = SYSCALLS.get(frame.name)
            if purpose is not None:
                return f"syscall: {purpose}", caller
    if any(f.is_h11 for f in frames):
        return "h11", caller
    innermost_python = next((f for f in reversed(frames) if f.python_path is not None), None)
    path = innermost_python.python_path if innermost_python is not None else None
    if path is not None and path.startswith("trio/"):
        if "_io_epoll" in path:
            return "trio: epoll bookkeeping (Python side)", caller
        if path.startswith("trio/_core/"):
            return "trio: scheduling, cancel scopes, checkpoints", caller
        return "trio: streams and socket wrappers", caller
    if ours:
        return f"ours: {component_of(ours[0])}", ours[0].name
    return "other (interpreter, libraries)", innermost_python.name if innermost_python else "-"


@dataclass(frozen=True, slots=True)
class Breakdown:
    samples: int
    layers: dict[str, int]  # layer -> samples, largest first
    details: dict[tuple[str, str], int]  # (layer, detail) -> samples, largest first


def break_down(stacks: Iterable[tuple[list[Frame], int]]) -> Breakdown:
    layers: Counter[str] = Counter()
    details: Counter[tuple[str, str]] = Counter()
    for frames, count in stacks:
        layer, detail = classify(frames)
        layers[layer] += count
        details[(layer, detail)] += count
    return Breakdown(sum(layers.values()), dict(layers.most_common()), dict(details.most_common()))


def is_kernel_layer(layer: str) -> bool:
    return layer.startswith("syscall: ")


def layer_rows(
    breakdown: Breakdown,
    user_us: float | None,
    system_us: float | None,
    top_details: int = 2,
) -> list[tuple[str, str, str, str]]:
    """(layer, share of py-spy's samples, us per request, main callers) rows, largest first.

    py-spy stops the process to read each stack, and those stops land on syscall
    boundaries more often than their on-CPU time warrants: its syscall layers held ~40 % of
    the samples where perf's on-CPU sampling and /proc both put the kernel at ~19 %. So the
    microseconds are not shares times the total: the syscall layers divide the measured
    system time between them, every other layer the user time, each by its samples."""
    rows = []
    total = breakdown.samples or 1
    kernel = sum(n for layer, n in breakdown.layers.items() if is_kernel_layer(layer)) or 1
    user = sum(n for layer, n in breakdown.layers.items() if not is_kernel_layer(layer)) or 1
    for layer, count in breakdown.layers.items():
        if user_us is None or system_us is None:
            us = "-"
        elif is_kernel_layer(layer):
            us = f"{count / kernel * system_us:.1f}"
        else:
            us = f"{count / user * user_us:.1f}"
        callers = [
            f"{detail} {n / count:.0%}"
            for (lay, detail), n in breakdown.details.items()
            if lay == layer
        ][:top_details]
        rows.append((layer, f"{count / total:.1%}", us, ", ".join(callers)))
    return rows


# -- measuring ---------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far, from /proc/PID/stat."""
    raw = (PROC / str(pid) / "stat").read_text()
    fields = raw.rpartition(")")[2].split()  # the command name may hold spaces
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def drive(target: Target, load: hop.Load, seconds: int) -> list[str]:
    return hop.load_command(load, target.url, target.headers, seconds)


def parsed(load: hop.Load, output: str) -> BenchResult:
    return parse_wrk(output) if load.tool == "wrk" else parse_ab(output)


def measure_cpu(target: Target, load: hop.Load, seconds: int) -> dict[str, float]:
    assert target.pid is not None
    user0, system0 = cpu_seconds(target.pid)
    out = subprocess.run(drive(target, load, seconds), capture_output=True, text=True)
    user1, system1 = cpu_seconds(target.pid)
    result = parsed(load, out.stdout)
    requests = max(result.requests, 1)
    return {
        "requests": result.requests,
        "requests_per_s": result.requests_per_s,
        "user_us_per_request": (user1 - user0) / requests * 1e6,
        "system_us_per_request": (system1 - system0) / requests * 1e6,
        "cpu_share": (user1 - user0 + system1 - system0) / result.duration_s,
    }


def under_load(target: Target, load: hop.Load, seconds: int, tool: list[str]) -> tuple[str, str]:
    """Run ``tool`` (a profiler attached to the target) while the load runs against the
    target for a second longer on each side; returns (the load's output, the tool's)."""
    tester = subprocess.Popen(
        drive(target, load, seconds + 2),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1)
        attached = subprocess.run(tool, capture_output=True, text=True, timeout=seconds + 60)
        out, _ = tester.communicate(timeout=seconds + 60)
    finally:
        if tester.poll() is None:
            tester.kill()
            tester.wait()
    return out, attached.stdout + attached.stderr


def count_syscalls(target: Target, load: hop.Load, seconds: int, out_dir: Path) -> dict[str, Any]:
    """strace -c over one wrk run; counts per request (strace's own times are not kept)."""
    assert target.pid is not None
    summary = out_dir / "strace.txt"
    tracer = subprocess.Popen(
        ["strace", "-c", "-f", "-o", str(summary), "-p", str(target.pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)  # attached
        out = subprocess.run(drive(target, load, seconds), capture_output=True, text=True)
    finally:
        tracer.send_signal(signal.SIGINT)  # detach: strace writes its summary
        try:
            tracer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait()
    requests = max(parsed(load, out.stdout).requests, 1)
    calls = parse_strace_summary(summary.read_text())
    return {
        "requests": requests,
        "per_request": {
            name: round(n / requests, 3) for name, n in sorted(calls.items(), key=lambda x: -x[1])
        },
        "total_per_request": round(sum(calls.values()) / requests, 3),
    }


def perf_shares(target: Target, load: hop.Load, seconds: int, out_dir: Path) -> dict[str, Any]:
    """On-CPU samples only (``perf record -e cpu-clock``), split by the code they were in:
    the kernel, the interpreter (libpython: our code, trio, everything in Python), the
    compiled h11, libc. A check on py-spy, whose samples also count time spent runnable
    but waiting for a core, which on a busy 2-core machine collects in syscalls."""
    assert target.pid is not None
    data = out_dir / "perf.data"
    record = ["perf", "record", "-e", "cpu-clock", "-F", "999", "-p", str(target.pid)]
    record += ["-o", str(data), "--", "sleep", str(seconds)]
    under_load(target, load, seconds, record)
    report = ["perf", "report", "-i", str(data), "--no-children", "--stdio", "-g", "none"]
    by_dso = subprocess.run([*report, "--sort", "dso"], capture_output=True, text=True)
    by_symbol = subprocess.run([*report, "--sort", "dso,sym"], capture_output=True, text=True)
    return {
        "command": record,
        "by_dso": parse_perf_report(by_dso.stdout)[:8],
        "top_symbols": parse_perf_report(by_symbol.stdout)[:25],
    }


_PERF_ROW = re.compile(r"^\s*([\d.]+)%\s+(.+?)\s*$")


def parse_perf_report(text: str) -> list[tuple[float, str]]:
    """(percent, what) rows of ``perf report --stdio``, in its order (largest first)."""
    rows = []
    for line in text.splitlines():
        match = _PERF_ROW.match(line)
        if match and not line.lstrip().startswith("#"):
            rows.append((float(match[1]), " ".join(match[2].split())))
    return rows


def parse_strace_summary(text: str) -> dict[str, int]:
    """syscall -> calls, from the table ``strace -c`` writes."""
    calls = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0].replace(".", "").isdigit() and parts[-1] != "total":
            calls[parts[-1]] = int(parts[3])
    return calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hop_profile", description=__doc__)
    parser.add_argument("--target", default="proxy", help="a bench.hop target with a process")
    parser.add_argument("--load", default="wrk", choices=sorted(hop.LOADS))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--strace", action="store_true", help="count syscalls per request")
    parser.add_argument("--speedscope", action="store_true", help="also write a speedscope file")
    parser.add_argument("--perf", action="store_true", help="on-CPU split by perf (kernel...)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    if args.target not in hop.TARGETS:
        parser.error(f"unknown target {args.target!r}")
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("error: py-spy is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return 1
    hop.exit_on_termination()
    load = hop.LOADS[args.load]
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime())
    out_dir = args.out / f"hop-profile-{args.target}-{args.load}-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    with lab_running() as lab:
        (target,) = hop.start_targets(lab, [args.target])
        if target.pid is None:
            print(f"error: {args.target} has no process of ours to profile", file=sys.stderr)
            return 1
        subprocess.run(drive(target, load, WARMUP_S), capture_output=True)
        load_before = os.getloadavg()
        cpu = measure_cpu(target, load, args.seconds)
        raw = out_dir / "profile.raw"
        attach = [spy, "record", "-p", str(target.pid), "-r", str(SAMPLE_RATE_HZ)]
        attach += ["-d", str(args.seconds)]
        record = [*attach, "--native", "--format", "raw", "-o", str(raw)]
        spied, spy_out = under_load(target, load, args.seconds, record)
        if not raw.exists():
            print(f"error: py-spy wrote nothing:\n{spy_out}", file=sys.stderr)
            return 1
        if args.speedscope:
            scope = [*attach, "--format", "speedscope", "-o", str(out_dir / "profile.json")]
            under_load(target, load, args.seconds, scope)
        syscalls = count_syscalls(target, load, args.seconds, out_dir) if args.strace else None
        perf = perf_shares(target, load, args.seconds, out_dir) if args.perf else None
        load_after = os.getloadavg()
    breakdown = break_down(parse_raw(raw.read_text()))
    cpu_us = cpu["user_us_per_request"] + cpu["system_us_per_request"]
    rows = layer_rows(breakdown, cpu["user_us_per_request"], cpu["system_us_per_request"])
    summary = {
        "target": args.target,
        "load": drive(target, load, args.seconds),
        "started": stamp,
        "h11": H11_NAME,
        "accel": ACCEL_STATE,  # our modules: compiled (mypyc) or pure, and why
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "cpu": {k: round(v, 3) for k, v in cpu.items()},
        "profile": {
            "command": record,
            "samples": breakdown.samples,
            "requests_per_s_while_sampled": parsed(load, spied).requests_per_s,
            "layers": breakdown.layers,
            "details": [
                {"layer": layer, "detail": detail, "samples": n}
                for (layer, detail), n in breakdown.details.items()
            ],
        },
        "syscalls": syscalls,
        "perf": perf,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{args.target} under {args.load}: {cpu['requests_per_s']:,.0f} req/s at {cpu['cpu_share']:.0%} of a core;"
        f" {cpu_us:.1f} us CPU per request ({cpu['user_us_per_request']:.1f} user,"
        f" {cpu['system_us_per_request']:.1f} system); h11: {H11_NAME}; ours: {ACCEL_STATE}"
    )
    print(format_rows(("layer", "py-spy share", "us/req", "main callers"), rows))
    if syscalls is not None:
        per = ", ".join(f"{k} {v:g}" for k, v in list(syscalls["per_request"].items())[:8])
        print(f"syscalls per request: {syscalls['total_per_request']:g} ({per})")
    if perf is not None:
        print(
            "on-CPU (perf): " + ", ".join(f"{what} {pct:.1f}%" for pct, what in perf["by_dso"][:5])
        )
    print(f"load average before {summary['loadavg_before']}, after {summary['loadavg_after']}")
    print(f"files: {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
