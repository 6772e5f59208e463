"""Put numbers on the post's performance claims, on this machine, with the repository's scripts.

    uv run benchmarks/run.py                  # about five minutes; prints progress, then one table
    uv run benchmarks/run.py --quick          # a few seconds: a smoke test of the whole run
    uv run --group bench benchmarks/run.py --plot benchmarks/results.png

Each script runs as a subprocess through its command line, its output sent to /dev/null or a
file, against bare-pyzmq peers (benchmarks/peers.py); each figure stands next to a bare-pyzmq
baseline measured in the same run, or next to its theoretical bound. Script and baseline runs
alternate (script, bare, script, bare, ...), and each ratio is the median of the ratios of those
pairs, with the lowest and the highest beside it. Request-reply and publish-subscribe run over
TCP on 127.0.0.1, as the scripts do by default, on free ports; the pipeline over ipc://. The CURVE
rows run the twins in secure/ against the top-level scripts they copy.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zmq
import zmq.auth

ROOT = Path(__file__).resolve().parent.parent
# The CURVE twins of the top-level scripts: the same script, plus --curve-secret.
SECURE = "secure"
PEERS = Path(__file__).resolve().parent / "peers.py"
DISPATCHER = Path(__file__).resolve().parent / "dispatcher.py"
SUBSCRIBER_SOCKETS_PER_PROCESS = 250
# libzmq's listen backlog when a socket does not set ZMQ_BACKLOG.
DEFAULT_BACKLOG = 100
# How long any one wait for a peer may take before the run fails, saying which peer it was.
WAIT = 60.0
# Peers get the common start this far ahead: time to write it to all of them and for each to
# run a little before its window opens, so every window starts under the same load.
START_LEAD = 0.2
STARTED = time.monotonic()


@dataclass
class Settings:
    # Clients -> (script/bare pairs of runs, seconds each run measures).
    request_reply: dict[int, tuple[int, float]]
    publish_pairs: int
    publish_count: int
    curve_pairs: int
    join_counts: Sequence[int]
    join_repeats: int
    fan_out_subscribers: int
    fan_out_interval: float
    fan_out_seconds: float
    worker_counts: Sequence[int]
    tasks: int
    pipeline_repeats: int
    balance_repeats: int


FULL = Settings(
    # 15 pairs for one client: its ratio is the one judged against 0.9, and pairs vary by 10 %.
    request_reply={1: (15, 1.0), 4: (5, 0.5), 16: (5, 0.5)},
    publish_pairs=7,
    publish_count=200_000,
    curve_pairs=7,
    join_counts=(100, 250, 500, 1000),
    join_repeats=3,
    fan_out_subscribers=1000,
    fan_out_interval=0.001,
    # At least two whole seconds of messages counted after every subscriber's first second.
    fan_out_seconds=3.5,
    worker_counts=(1, 2, 3, 4, 8, 16),
    tasks=100,
    pipeline_repeats=2,
    balance_repeats=3,
)
QUICK = Settings(
    request_reply={1: (1, 0.2), 4: (1, 0.2)},
    publish_pairs=1,
    publish_count=50_000,
    curve_pairs=1,
    # Over the default backlog of 100, so the quick run shows the difference too.
    join_counts=(250,),
    join_repeats=1,
    fan_out_subscribers=100,
    fan_out_interval=0.001,
    # Just over 2 s: at least one whole second is counted.
    fan_out_seconds=2.05,
    worker_counts=(2,),
    tasks=20,
    pipeline_repeats=1,
    balance_repeats=1,
)


@dataclass
class Row:
    measure: str
    ours: float
    baseline: float | None = None
    baseline_name: str = ""
    note: str = ""
    unit: str = ""
    # The ratio in each pair of runs (script and bare), or in each run: the ratio column then
    # shows their median, not the ratio of the two medians.
    paired_ratios: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.paired_ratios:
            return statistics.median(self.paired_ratios)
        return None if not self.baseline else self.ours / self.baseline


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    speedup: dict[int, dict[str, float]] = field(default_factory=dict)
    # Publisher kind -> subscribers -> seconds until every one had joined (median of repeats).
    join: dict[str, dict[int, float]] = field(default_factory=dict)
    # Workers ("4 equal", "one 3x slower") -> way of dealing tasks -> makespan / ideal.
    balance: dict[str, dict[str, float]] = field(default_factory=dict)


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def raise_open_file_limit() -> None:
    # 1000 subscribers mean over 1000 connections, each a file descriptor, in the publisher.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class Processes:
    """Every process the benchmark starts, killed when it ends, whatever happens."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(
        self,
        argv: Sequence[str],
        stdout: int | IO[Any] = subprocess.DEVNULL,
        stdin: int | None = None,
    ) -> subprocess.Popen[str]:
        # Python's default buffering, as for anyone who redirects the output to a file.
        environment = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        process = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=environment,
        )
        self.started.append(process)
        return process

    def script(
        self, name: str, *args: str, stdout: int | IO[Any] = subprocess.DEVNULL
    ) -> subprocess.Popen[str]:
        return self.start([sys.executable, str(ROOT / name), *args], stdout=stdout)

    def peer(self, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
        return self.start([sys.executable, str(PEERS), *args], stdout=subprocess.PIPE, stdin=stdin)

    def stop(self, process: subprocess.Popen[str]) -> None:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        if process in self.started:
            self.started.remove(process)

    def stop_all(self) -> None:
        for process in list(self.started):
            self.stop(process)


def describe(process: subprocess.Popen[str]) -> str:
    return " ".join(str(arg) for arg in process.args)  # type: ignore[union-attr]


def read_line(process: subprocess.Popen[str], timeout: float = WAIT) -> str:
    """The next line a process prints; if none comes within `timeout`, kill it and say so."""
    assert process.stdout is not None
    # readline() has no timeout: a watchdog kill ends it with EOF instead.
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        line = process.stdout.readline()
    finally:
        watchdog.cancel()
    if not line:
        process.wait(timeout=10)
        error = process.stderr.read() if process.stderr else ""
        raise RuntimeError(f"{describe(process)} said nothing within {timeout:g} s: {error}")
    return line


def read_report(process: subprocess.Popen[str], timeout: float = WAIT) -> dict[str, Any]:
    """The next JSON line a peer prints."""
    report: dict[str, Any] = json.loads(read_line(process, timeout))
    return report


def start_together(peers: Sequence[subprocess.Popen[str]]) -> None:
    """Write one common start, a moment ahead, on every peer's stdin: the barrier."""
    start = time.monotonic() + START_LEAD
    for peer in peers:
        assert peer.stdin is not None
        peer.stdin.write(f"{start}\n")
        peer.stdin.flush()


def run_to_exit(process: subprocess.Popen[str], timeout: float = 120.0) -> str:
    stdout, stderr = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"{describe(process)} exited {process.returncode}: {stderr}")
    return stdout or ""


def free_endpoint() -> str:
    """A tcp:// endpoint on 127.0.0.1 whose port nothing is bound to at this moment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def wait_until_listening(endpoint: str, process: subprocess.Popen[str]) -> None:
    """Return once a TCP socket listens on the endpoint's port; fail if `process` exits first."""
    port = int(endpoint.rsplit(":", 1)[1])
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read() if process.stderr else ""
            raise RuntimeError(f"{describe(process)} exited {process.returncode}: {error}")
        if is_listening(port):
            return
        time.sleep(0.01)
    raise RuntimeError(f"{describe(process)} was not listening on {endpoint} within {WAIT:g} s")


def is_listening(port: int) -> bool:
    table = Path("/proc/net/tcp")
    if not table.exists():
        # Not Linux: connect and close, which the server sees as a connection that came and went.
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0
    # Linux: the kernel's own table, so nothing connects to the server before the measurement.
    listen_state = "0A"
    for line in table.read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if int(local.rsplit(":", 1)[1], 16) == port and state == listen_state:
            return True
    return False


def paired_note(ratios: Sequence[float]) -> str:
    if len(ratios) < 2:
        return f"{len(ratios)} pair of runs"
    return f"{len(ratios)} pairs of runs: ratio {min(ratios):.2f} to {max(ratios):.2f}"


@dataclass
class CurveKeys:
    """Key files as zmq.auth.create_certificates writes them, for a server and one client."""

    folder: Path

    def __post_init__(self) -> None:
        self.folder.mkdir(mode=0o700)
        zmq.auth.create_certificates(self.folder, "server")
        zmq.auth.create_certificates(self.folder, "client")

    def server_args(self) -> list[str]:
        return ["--curve-secret", str(self.folder / "server.key_secret")]

    def client_args(self) -> list[str]:
        return [
            "--curve-server", str(self.folder / "server.key"),
            "--curve-secret", str(self.folder / "client.key_secret"),
        ]  # fmt: skip


def script_path(name: str, keys: CurveKeys | None) -> str:
    """A top-level script, or with CURVE keys its twin in secure/, which takes the key flags."""
    return f"{SECURE}/{name}" if keys else name


def round_trips(
    processes: Processes,
    kind: str,
    clients: int,
    seconds: float,
    keys: CurveKeys | None = None,
) -> dict[str, float]:
    """`clients` REQ clients against server_req_repl.py or the bare echo, in one common window;
    with `keys`, against secure/server_req_repl.py or the bare echo, with CURVE."""
    endpoint = free_endpoint()
    server_args = keys.server_args() if keys else []
    client_args = keys.client_args() if keys else []
    if kind == "script":
        server = processes.script(
            script_path("server_req_repl.py", keys), "--bind", endpoint, *server_args
        )
        wait_until_listening(endpoint, server)
    else:
        server = processes.peer("rep-echo", endpoint, *server_args)
        read_report(server)
    peers = [
        processes.peer("req-client", endpoint, str(seconds), *client_args, stdin=subprocess.PIPE)
        for _ in range(clients)
    ]
    # Every client has started and warmed up before any window opens.
    for peer in peers:
        read_report(peer)
    start_together(peers)
    reports = [read_report(peer, timeout=START_LEAD + seconds + WAIT) for peer in peers]
    for process in (*peers, server):
        processes.stop(process)
    latencies = sorted(itertools.chain.from_iterable(r["latencies_us"] for r in reports))
    return {
        "rate": sum(report["round_trips"] for report in reports) / seconds,
        "median_us": statistics.median(latencies),
        "p99_us": latencies[int(len(latencies) * 0.99)],
    }


def bench_request_reply(
    settings: Settings, processes: Processes, folder: Path, results: Results
) -> None:
    for clients, (pairs, seconds) in settings.request_reply.items():
        measured: dict[str, list[dict[str, float]]] = {"script": [], "bare": []}
        for pair in range(pairs):
            # Each goes first in every other pair, so that a drift in the machine favours neither.
            for kind in ("script", "bare") if pair % 2 == 0 else ("bare", "script"):
                progress(
                    f"request-reply: {kind} server, {clients} clients for {seconds:g} s, "
                    f"pair {pair + 1}/{pairs}"
                )
                measured[kind].append(round_trips(processes, kind, clients, seconds))
        label = "1 client" if clients == 1 else f"{clients} clients"
        for key, name, unit in (
            ("rate", "round trips/s", "/s"),
            ("median_us", "median latency", " µs"),
            ("p99_us", "p99 latency", " µs"),
        ):
            ratios = [s[key] / b[key] for s, b in zip(measured["script"], measured["bare"])]
            results.rows.append(
                Row(
                    f"request-reply, {label}: {name}",
                    statistics.median(run[key] for run in measured["script"]),
                    statistics.median(run[key] for run in measured["bare"]),
                    "bare REP echo",
                    unit=unit,
                    note=paired_note(ratios) + (f", {seconds:g} s each" if key == "rate" else ""),
                    paired_ratios=ratios,
                )
            )


def publisher_argv(kind: str, endpoint: str, count: int, keys: CurveKeys | None) -> list[str]:
    server_args = keys.server_args() if keys else []
    if kind == "script":
        return [
            sys.executable, str(ROOT / script_path("server_broadcast.py", keys)),
            "--bind", endpoint, "--interval", "0", "--count", str(count), *server_args,
        ]  # fmt: skip
    return [sys.executable, str(PEERS), "pub-loop", endpoint, str(count), *server_args]


def time_publisher(processes: Processes, argv: Sequence[str]) -> float:
    started = time.perf_counter()
    run_to_exit(processes.start(argv))
    return time.perf_counter() - started


def publish_times(
    processes: Processes, kind: str, count: int, keys: CurveKeys | None = None
) -> tuple[float, float]:
    """Seconds for a publisher to send 1 message and `count` messages to one subscriber."""
    endpoint = free_endpoint()
    client_args = keys.client_args() if keys else []
    subscriber = processes.peer("sub-count", endpoint, "1", *client_args, stdin=subprocess.PIPE)
    read_report(subscriber)
    argv_one = publisher_argv(kind, endpoint, 1, keys)
    argv_all = publisher_argv(kind, endpoint, count, keys)
    # Time 1 message and N messages: the difference leaves out Python's start-up.
    times = time_publisher(processes, argv_one), time_publisher(processes, argv_all)
    processes.stop(subscriber)
    return times


def publish_rates(times: Sequence[tuple[float, float]], count: int) -> list[float]:
    """Messages a second in each run, from (1-message, `count`-message) times."""
    # One start-up for all runs, the median: a single start-up is as noisy as the difference.
    startup = statistics.median(one for one, _ in times)
    # Not a number, which the table's check reports, if start-up noise swamped the sending.
    return [(count - 1) / (full - startup) if full > startup else math.nan for _, full in times]


def bench_publish_rate(
    settings: Settings, processes: Processes, folder: Path, results: Results
) -> None:
    count = settings.publish_count
    times: dict[str, list[tuple[float, float]]] = {"script": [], "bare": []}
    for pair in range(settings.publish_pairs):
        for kind in ("script", "bare"):
            progress(
                f"publish rate: {kind} publisher, {count} messages, "
                f"pair {pair + 1}/{settings.publish_pairs}"
            )
            times[kind].append(publish_times(processes, kind, count))
    rates = {kind: publish_rates(times[kind], count) for kind in times}
    ratios = [script / bare for script, bare in zip(rates["script"], rates["bare"])]
    results.rows.append(
        Row(
            "publish-subscribe: messages published/s, --interval 0",
            statistics.median(rates["script"]),
            statistics.median(rates["bare"]),
            "bare PUB loop, same payload",
            unit="/s",
            note=paired_note(ratios),
            paired_ratios=ratios,
        )
    )


def bench_curve(settings: Settings, processes: Processes, folder: Path, results: Results) -> None:
    """secure/server_req_repl.py and secure/server_broadcast.py against the plain originals."""
    if not zmq.has("curve"):
        print("CURVE: skipped, this libzmq was built without CURVE.", file=sys.stderr)
        results.skipped.append("curve")
        return
    keys = CurveKeys(folder / "keys")
    pairs = settings.curve_pairs
    pair_seconds = settings.request_reply[1][1]
    rates: dict[str, list[float]] = {"plain": [], "curve": []}
    for pair in range(pairs):
        for kind in ("plain", "curve"):
            server = script_path("server_req_repl.py", keys if kind == "curve" else None)
            progress(f"request-reply: {server}, 1 client, pair {pair + 1}/{pairs}")
            run = round_trips(
                processes, "script", 1, pair_seconds, keys if kind == "curve" else None
            )
            rates[kind].append(run["rate"])
    ratios = [curve / plain for curve, plain in zip(rates["curve"], rates["plain"])]
    results.rows.append(
        Row(
            f"request-reply with CURVE ({SECURE}/server_req_repl.py), 1 client: round trips/s",
            statistics.median(rates["curve"]),
            statistics.median(rates["plain"]),
            "server_req_repl.py, without CURVE",
            unit="/s",
            note=paired_note(ratios) + f", {pair_seconds:g} s each",
            paired_ratios=ratios,
        )
    )
    count = settings.publish_count
    times: dict[str, list[tuple[float, float]]] = {"plain": [], "curve": []}
    for pair in range(pairs):
        for kind in ("plain", "curve"):
            publisher = script_path("server_broadcast.py", keys if kind == "curve" else None)
            progress(f"publish rate: {publisher}, {count} messages, pair {pair + 1}/{pairs}")
            times[kind].append(
                publish_times(processes, "script", count, keys if kind == "curve" else None)
            )
    publish = {kind: publish_rates(times[kind], count) for kind in times}
    ratios = [curve / plain for curve, plain in zip(publish["curve"], publish["plain"])]
    results.rows.append(
        Row(
            f"publish-subscribe with CURVE ({SECURE}/server_broadcast.py): messages "
            "published/s, --interval 0",
            statistics.median(publish["curve"]),
            statistics.median(publish["plain"]),
            "server_broadcast.py, without CURVE",
            unit="/s",
            note=paired_note(ratios),
            paired_ratios=ratios,
        )
    )


JOIN_PUBLISHERS = {
    "script": "server_broadcast.py",
    "default": f"bare PUB, default backlog ({DEFAULT_BACKLOG})",
    "1024": "bare PUB, backlog 1,024",
}


def join_time(processes: Processes, kind: str, subscribers: int) -> tuple[float, int]:
    """Seconds from one common start until `subscribers` SUB sockets, in processes of 250,
    have all joined a publisher listening on TCP; and how many joined."""
    endpoint = free_endpoint()
    # The subscribers' sockets are made first and connect only at the start: the time is that
    # of connecting and the ZMTP handshake, not of starting Python.
    peers = [
        processes.peer("sub-join", endpoint, str(size), stdin=subprocess.PIPE)
        for size in groups_of(subscribers)
    ]
    for peer in peers:
        read_report(peer)
    if kind == "script":
        publisher = processes.script("server_broadcast.py", "--bind", endpoint, "--interval", "1")
        wait_until_listening(endpoint, publisher)
    else:
        backlog = [] if kind == "default" else ["--backlog", kind]
        publisher = processes.peer("pub-idle", endpoint, *backlog, stdin=subprocess.PIPE)
        read_report(publisher)
    start_together(peers)
    reports = [read_report(peer, timeout=START_LEAD + 30 + WAIT) for peer in peers]
    for process in (*peers, publisher):
        processes.stop(process)
    return max(report["seconds"] for report in reports), sum(r["joined"] for r in reports)


def groups_of(subscribers: int) -> list[int]:
    """Subscriber sockets per process: 250 each, as one process holds no more comfortably."""
    return [
        min(SUBSCRIBER_SOCKETS_PER_PROCESS, subscribers - start)
        for start in range(0, subscribers, SUBSCRIBER_SOCKETS_PER_PROCESS)
    ]


def bench_join(settings: Settings, processes: Processes, folder: Path, results: Results) -> None:
    measured: dict[str, dict[int, list[float]]] = {kind: {} for kind in JOIN_PUBLISHERS}
    short: list[str] = []
    for subscribers in settings.join_counts:
        for repeat in range(settings.join_repeats):
            for kind in JOIN_PUBLISHERS:
                seconds, joined = join_time(processes, kind, subscribers)
                progress(
                    f"join: {subscribers} subscribers to {JOIN_PUBLISHERS[kind]}, "
                    f"run {repeat + 1}/{settings.join_repeats}: {joined} in {seconds:.3f} s"
                )
                measured[kind].setdefault(subscribers, []).append(seconds)
                if joined < subscribers:
                    short.append(f"{joined} of {subscribers} joined {JOIN_PUBLISHERS[kind]}")
    results.join = {
        kind: {count: statistics.median(times) for count, times in by_count.items()}
        for kind, by_count in measured.items()
    }
    median = results.join
    for subscribers in settings.join_counts:
        script, default = median["script"][subscribers], median["default"][subscribers]
        results.rows.append(
            Row(
                f"join: {subscribers:,} subscribers, all connected to server_broadcast.py",
                1000 * script,
                1000 * default,
                JOIN_PUBLISHERS["default"],
                unit=" ms",
                note=f"median of {settings.join_repeats}; the default backlog took "
                f"{default / script:.1f} times as long",
            )
        )
    most = max(settings.join_counts)
    results.rows.append(
        Row(
            f"join: {most:,} subscribers, all connected to server_broadcast.py",
            1000 * median["script"][most],
            1000 * median["1024"][most],
            JOIN_PUBLISHERS["1024"],
            unit=" ms",
            note="; ".join(short) or f"median of {settings.join_repeats}",
        )
    )


FAN_OUT_PUBLISHERS = {"script": "server_broadcast.py", "bare": "bare PUB, same schedule"}


def fan_out_run(
    settings: Settings, processes: Processes, folder: Path, kind: str
) -> dict[str, Any]:
    """Subscribers, in processes of 250, counting what a publisher sends on a schedule."""
    subscribers, interval = settings.fan_out_subscribers, settings.fan_out_interval
    endpoint = free_endpoint()
    with (folder / f"publisher-{kind}.txt").open("w+") as publisher_output:
        # The publisher first: 1,000 subscribers retrying a closed port would load the CPU.
        if kind == "script":
            publisher = processes.script(
                "server_broadcast.py", "--bind", endpoint, "--interval", str(interval),
                stdout=publisher_output,
            )  # fmt: skip
            wait_until_listening(endpoint, publisher)
        else:
            publisher = processes.peer("pub-timed", endpoint, str(interval), stdin=subprocess.PIPE)
            read_report(publisher)
        started = time.monotonic()
        peers = [
            processes.peer("sub-count", endpoint, str(size), "--hold", stdin=subprocess.PIPE)
            for size in groups_of(subscribers)
        ]
        # Each says it is ready, then that every one of its sockets has had a message.
        for peer in (*peers, *peers):
            read_report(peer)
        joined_after = time.monotonic() - started
        time.sleep(settings.fan_out_seconds)
        if kind == "script":
            publisher.terminate()
            publisher.wait(timeout=WAIT)
            publisher_output.seek(0)
            published = Counter(
                line.removeprefix("Sent ")
                for line in publisher_output.read().splitlines()
                if line.startswith("Sent ")
            )
        else:
            assert publisher.stdin is not None
            publisher.stdin.close()
            published = Counter(read_report(publisher)["sent"])
        processes.stop(publisher)
    counts: list[dict[str, int]] = []
    for peer in peers:
        assert peer.stdin is not None
        peer.stdin.close()
        counts.extend(read_report(peer)["counts"])
        processes.stop(peer)
    # PUB keeps no history, so a subscriber misses what was sent before it joined. The payload's
    # time has one-second steps, and the publisher says how many it sent in each: count the
    # whole seconds after the subscriber's first message and before the publisher stopped.
    last = max(second_of(payload) for payload in published)
    lost, expected = [], []
    for received in counts:
        joined = min(second_of(payload) for payload in received)
        seconds = {p: n for p, n in published.items() if joined < second_of(p) < last}
        lost.append(sum(max(0, n - received.get(p, 0)) for p, n in seconds.items()))
        expected.append(sum(seconds.values()))
    whole_seconds = sorted(published.items(), key=lambda item: second_of(item[0]))[1:-1]
    return {
        "lost": lost,
        "expected": expected,
        "rate": statistics.median(n for _, n in whole_seconds) if whole_seconds else math.nan,
        "joined_after": joined_after,
    }


def second_of(payload: str) -> float:
    return time.mktime(time.strptime(payload[len("TIME") :]))


def bench_fan_out(settings: Settings, processes: Processes, folder: Path, results: Results) -> None:
    subscribers = settings.fan_out_subscribers
    runs = {}
    for kind, name in FAN_OUT_PUBLISHERS.items():
        progress(
            f"fan-out: {subscribers} subscribers, {name} at {1 / settings.fan_out_interval:g}/s"
        )
        runs[kind] = fan_out_run(settings, processes, folder, kind)
    script, bare = runs["script"], runs["bare"]
    results.rows.append(
        Row(
            f"fan-out, {subscribers:,} subscribers: messages lost, worst subscriber",
            max(script["lost"]),
            max(bare["lost"]),
            FAN_OUT_PUBLISHERS["bare"],
            note=f"of {statistics.median(script['expected']):,.0f} counted each; "
            f"sent at {script['rate']:,.0f}/s (bare: {bare['rate']:,.0f}/s)",
        )
    )
    results.rows.append(
        Row(
            f"fan-out, {subscribers:,} subscribers: messages lost, all subscribers",
            sum(script["lost"]),
            sum(bare["lost"]),
            FAN_OUT_PUBLISHERS["bare"],
            note=f"of {sum(script['expected']):,} counted in all; every subscriber had a "
            f"message {script['joined_after']:.1f} s after they started",
        )
    )


def pipeline_run(
    processes: Processes,
    folder: Path,
    task_count: int,
    workers: int,
    slow: Sequence[float] | None,
    tag: str,
) -> dict[str, Any]:
    """One ventilator run with `workers` workers; client_pipeline.py unless `slow` factors given."""
    tasks, results_endpoint = f"ipc://{folder}/tasks-{tag}", f"ipc://{folder}/results-{tag}"
    ventilator = processes.script(
        "server_pipeline.py", "--bind", tasks, "--results", results_endpoint,
        "--workers", str(workers), "--tasks", str(task_count), "--timeout", "30",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    worker_processes = []
    for number in range(workers):
        if slow is None:
            worker_processes.append(
                processes.script(
                    "client_pipeline.py",
                    f"w{number}",
                    "--connect",
                    tasks,
                    "--results",
                    results_endpoint,
                    stdout=subprocess.PIPE,
                )
            )
        else:
            worker_processes.append(
                processes.peer(
                    "worker", f"w{number}", tasks, results_endpoint, "--slow", str(slow[number])
                )
            )
    makespan, tasks_per_worker = read_summary(run_to_exit(ventilator))
    workloads: list[list[int]] = []
    for process in worker_processes:
        # SIGTERM, not SIGKILL: the worker exits cleanly and flushes what it printed.
        process.terminate()
        output, _ = process.communicate(timeout=30)
        processes.stop(process)
        workloads.append([int(ms) for ms in re.findall(r"^Task from .+: (\d+) ms$", output, re.M)])
    # The sink's count of each worker's results against the tasks that worker says it did.
    said = {f"w{number}": len(done) for number, done in enumerate(workloads) if done}
    if said != tasks_per_worker:
        raise RuntimeError(f"the sink counted {tasks_per_worker}, the workers said {said}")
    factors = slow or [1.0] * workers
    work_ms = [sum(done) for done in workloads]
    total = sum(work_ms) / 1000
    return {
        "makespan": makespan,
        "ideal": total / sum(1 / factor for factor in factors),
        "round_robin": max(work * factor for work, factor in zip(work_ms, factors)) / 1000,
        "counts": [len(done) for done in workloads],
        "total": total,
        "workloads": workloads,
    }


def read_summary(summary: str) -> tuple[float, dict[str, int]]:
    """The elapsed seconds and the results per worker in server_pipeline.py's summary:

    All 100 results in.
      'w0': 34 tasks
      ...
    Elapsed: 1.83 s (ideal, 3 workers of one speed: 1.73 s)
    """
    elapsed = re.search(r"^Elapsed: (\d+\.\d+) s", summary, re.M)
    if elapsed is None:
        raise RuntimeError(f"no 'Elapsed:' line in server_pipeline.py's summary:\n{summary}")
    # Names are printed with repr(); ours are plain (w0, w1...), so the quotes are all there is.
    per_worker = re.findall(r"^  '([^']*)': (\d+) tasks$", summary, re.M)
    return float(elapsed[1]), {name: int(count) for name, count in per_worker}


def dispatcher_run(
    processes: Processes, folder: Path, workloads: Sequence[int], slow: Sequence[float], tag: str
) -> dict[str, Any]:
    """The same workloads through the load-balancing dispatcher and workers that ask."""
    endpoint = f"ipc://{folder}/dispatcher-{tag}"
    workloads_file = folder / f"workloads-{tag}.txt"
    workloads_file.write_text("".join(f"{workload}\n" for workload in workloads))
    dispatcher = processes.start(
        [
            sys.executable, str(DISPATCHER), endpoint, "--workers", str(len(slow)),
            "--workloads", str(workloads_file),
        ],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    workers = [
        processes.peer("asking-worker", f"w{number}", endpoint, "--slow", str(factor))
        for number, factor in enumerate(slow)
    ]
    report = read_report(dispatcher, timeout=120)
    for process in (*workers, dispatcher):
        processes.stop(process)
    names = [f"w{number}" for number in range(len(slow))]
    total = sum(report["work_ms_per_worker"].values()) / 1000
    return {
        "makespan": report["makespan"],
        "ideal": total / sum(1 / factor for factor in slow),
        "counts": [report["tasks_per_worker"].get(name, 0) for name in names],
    }


def in_sending_order(per_worker: Sequence[Sequence[int]]) -> list[int]:
    """The workloads as round-robin dealt them: the first of each worker's, then the second..."""
    dealt = itertools.zip_longest(*per_worker)
    return [workload for turn in dealt for workload in turn if workload is not None]


def bench_pipeline(
    settings: Settings, processes: Processes, folder: Path, results: Results
) -> None:
    for workers in settings.worker_counts:
        runs = []
        for repeat in range(settings.pipeline_repeats):
            progress(
                f"pipeline: {settings.tasks} tasks, {workers} workers, "
                f"run {repeat + 1}/{settings.pipeline_repeats}"
            )
            runs.append(
                pipeline_run(
                    processes, folder, settings.tasks, workers, None, f"{workers}-{repeat}"
                )
            )
        makespan = statistics.median(run["makespan"] for run in runs)
        spread = max(max(run["counts"]) - min(run["counts"]) for run in runs)
        results.rows.append(
            Row(
                f"pipeline, {workers} workers: makespan vs round-robin bound",
                makespan,
                statistics.median(run["round_robin"] for run in runs),
                "largest share of work",
                unit=" s",
                note=f"tasks per worker differ by {spread} at most",
            )
        )
        results.rows.append(
            Row(
                f"pipeline, {workers} workers: makespan vs ideal",
                makespan,
                statistics.median(run["ideal"] for run in runs),
                "total work / workers",
                unit=" s",
            )
        )
        results.speedup[workers] = {
            "measured": statistics.median(run["total"] / run["makespan"] for run in runs),
            "round_robin": statistics.median(run["total"] / run["round_robin"] for run in runs),
            "ideal": float(workers),
        }
    bench_balance(settings, processes, folder, results)


BALANCE_CASES = {
    "4 equal workers": [1.0, 1.0, 1.0, 1.0],
    "4 workers, one 3x slower": [1.0] * 3 + [3.0],
}
DEALERS = {
    "round-robin": "round-robin (server_pipeline.py)",
    "load-balancing": "load-balancing (benchmarks/dispatcher.py)",
}


def bench_balance(settings: Settings, processes: Processes, folder: Path, results: Results) -> None:
    """Round-robin against load-balancing, on the same workloads, equal workers and unequal."""
    for number, (case, slow) in enumerate(BALANCE_CASES.items()):
        runs: dict[str, list[dict[str, Any]]] = {dealer: [] for dealer in DEALERS}
        for repeat in range(settings.balance_repeats):
            tag = f"balance-{number}-{repeat}"
            progress(f"pipeline, {case}: round-robin, run {repeat + 1}/{settings.balance_repeats}")
            dealt = pipeline_run(processes, folder, settings.tasks, len(slow), slow, tag)
            runs["round-robin"].append(dealt)
            progress(f"pipeline, {case}: load-balancing, the same {settings.tasks} workloads")
            workloads = in_sending_order(dealt["workloads"])
            runs["load-balancing"].append(dispatcher_run(processes, folder, workloads, slow, tag))
        results.balance[case] = {}
        for dealer, name in DEALERS.items():
            ratios = [run["makespan"] / run["ideal"] for run in runs[dealer]]
            results.balance[case][dealer] = statistics.median(ratios)
            counts = " / ".join(", ".join(map(str, run["counts"])) for run in runs[dealer])
            results.rows.append(
                Row(
                    f"pipeline, {case}, {name}: makespan vs ideal",
                    statistics.median(run["makespan"] for run in runs[dealer]),
                    statistics.median(run["ideal"] for run in runs[dealer]),
                    "total work / capacity",
                    unit=" s",
                    note=f"tasks per worker{' (slow one last)' if slow[-1] != 1 else ''}: {counts}",
                    paired_ratios=ratios,
                )
            )


def format_number(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    if unit == " s":
        return f"{value:.2f} s"
    if abs(value) >= 100:
        return f"{value:,.0f}{unit}"
    return f"{value:.1f}{unit}" if unit else f"{value:g}"


def print_table(results: Results) -> None:
    header = ("measure", "this repo", "baseline", "ratio", "baseline is", "note")
    lines = [
        (
            row.measure,
            format_number(row.ours, row.unit),
            format_number(row.baseline, row.unit),
            "" if row.ratio is None else f"{row.ratio:.2f}",
            row.baseline_name,
            row.note,
        )
        for row in results.rows
    ]
    print()
    print(
        f"Python {platform.python_version()}, pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, "
        f"{platform.machine()}, {os.cpu_count()} cores"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for line in lines:
        print("| " + " | ".join(line) + " |")
    for name in results.skipped:
        print(f"\n(skipped: {name})")


def expected_rows(settings: Settings) -> dict[str, int]:
    """How many rows each part adds to the table."""
    return {
        "request-reply": 3 * len(settings.request_reply),
        "publish": 1,
        "curve": 2,
        "join": len(settings.join_counts) + 1,
        "fan-out": 2,
        "pipeline": 2 * len(settings.worker_counts) + 2 * len(BALANCE_CASES),
    }


def check_complete(results: Results, settings: Settings, ran: Sequence[str]) -> list[str]:
    """What is missing from the table: a row per measure, and a finite number in each."""
    expected_by_part = expected_rows(settings)
    expected = sum(expected_by_part[name] for name in ran if name not in results.skipped)
    problems = []
    if len(results.rows) != expected:
        problems.append(f"expected {expected} rows, got {len(results.rows)}")
    for row in results.rows:
        for value in (row.ours, row.baseline, row.ratio):
            if value is not None and not math.isfinite(value):
                problems.append(f"{row.measure}: {value}")
    return problems


def plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (speedup, join, balance) = plt.subplots(1, 3, figsize=(15, 4.4))
    workers = sorted(results.speedup)
    for key, label, style in (
        ("ideal", "ideal (total work / workers)", "k--"),
        ("round_robin", "round-robin bound (largest share)", "C1:o"),
        ("measured", "measured, server_pipeline.py", "C0-o"),
    ):
        speedup.plot(workers, [results.speedup[w][key] for w in workers], style, label=label)
    speedup.set(
        xscale="log",
        xlabel="workers",
        ylabel="speed-up over one worker's total work",
        title="Pipeline: tasks of 1-100 ms",
    )
    speedup.set_xticks(workers, [str(w) for w in workers])
    speedup.legend()

    for kind, style in (("default", "C3:s"), ("1024", "C2--^"), ("script", "C0-o")):
        times = results.join.get(kind, {})
        counts = sorted(times)
        join.plot(counts, [times[c] for c in counts], style, label=JOIN_PUBLISHERS[kind])
    join.axhline(0.2, color="grey", linestyle=":", linewidth=1, label="target: 0.2 s")
    subscriber_counts = sorted(results.join.get("script", {}))
    slowest = max((max(times.values()) for times in results.join.values() if times), default=1)
    join.set(
        xscale="log",
        yscale="log",
        # Room above the slowest join for the legend.
        ylim=(None, 20 * slowest),
        xlabel="subscribers connecting at once (TCP)",
        ylabel="seconds until all have joined",
        title="Publish-subscribe: joining",
    )
    join.set_xticks(subscriber_counts, [f"{c:,}" for c in subscriber_counts])
    join.legend(loc="upper left")

    cases = list(results.balance)
    width = 0.38
    for offset, (dealer, name) in zip((-width / 2, width / 2), DEALERS.items()):
        values = [results.balance[case][dealer] for case in cases]
        bars = balance.bar(
            [index + offset for index in range(len(cases))], values, width, label=name
        )
        balance.bar_label(bars, fmt="%.2f")
    balance.axhline(1.0, color="k", linestyle="--", linewidth=1, label="ideal")
    balance.set_xticks(range(len(cases)), cases)
    tallest = max((max(by_dealer.values()) for by_dealer in results.balance.values()), default=1)
    balance.set(
        ylabel="makespan / ideal (same tasks)",
        ylim=(0, 1.4 * tallest),
        title="Pipeline: dealing tasks to 4 workers",
    )
    balance.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    progress(f"plot written to {path}")


@contextmanager
def scratch_folder() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="zmq-bench-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


Bench = Callable[[Settings, Processes, Path, Results], None]
BENCHMARKS: dict[str, Bench] = {
    "request-reply": bench_request_reply,
    "publish": bench_publish_rate,
    "curve": bench_curve,
    "join": bench_join,
    "fan-out": bench_fan_out,
    "pipeline": bench_pipeline,
}


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark the three patterns against bare pyzmq.")
    parser.add_argument(
        "--quick", action="store_true", help="a few seconds: check the run, not the numbers"
    )
    parser.add_argument(
        "--plot", type=Path, metavar="PNG", help="also draw the plot (needs --group bench)"
    )
    parser.add_argument(
        "--only",
        choices=sorted(BENCHMARKS),
        action="append",
        help="run only this part (repeatable)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    ran = [name for name in BENCHMARKS if not args.only or name in args.only]
    raise_open_file_limit()
    results = Results()
    processes = Processes()
    try:
        with scratch_folder() as folder:
            for name in ran:
                BENCHMARKS[name](settings, processes, folder, results)
    finally:
        processes.stop_all()
    print_table(results)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": [{**vars(row), "ratio": row.ratio} for row in results.rows],
                    "skipped": results.skipped,
                    "speedup": results.speedup,
                    "join": results.join,
                    "balance": results.balance,
                },
                indent=2,
            )
        )
    if args.plot:
        plot(results, args.plot)
    problems = check_complete(results, settings, ran)
    for problem in problems:
        print(f"incomplete: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
