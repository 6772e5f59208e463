"""Put numbers on the post's performance claims, on this machine, with the repository's scripts.

    uv run benchmarks/run.py                  # about a minute; prints progress, then one table
    uv run benchmarks/run.py --quick          # a few seconds: a smoke test of the whole run
    uv run --group bench benchmarks/run.py --plot benchmarks/results.png

Each script runs as a subprocess through its command line, its output sent to /dev/null, against
bare-pyzmq peers (benchmarks/peers.py); each figure stands next to a bare-pyzmq baseline measured
in the same run, or next to its theoretical bound. Rates are medians over repeated runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zmq

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "peers.py"
SUBSCRIBER_SOCKETS_PER_PROCESS = 250
STARTED = time.monotonic()


@dataclass
class Settings:
    repeats: int
    round_trip_seconds: float
    client_counts: Sequence[int]
    publish_count: int
    subscriber_counts: Sequence[int]
    fan_out_seconds: float
    worker_counts: Sequence[int]
    tasks: int
    pipeline_repeats: int


FULL = Settings(
    repeats=7,
    round_trip_seconds=0.3,
    client_counts=(1, 4, 16),
    publish_count=200_000,
    subscriber_counts=(1, 10, 100, 1000),
    fan_out_seconds=2.0,
    worker_counts=(1, 2, 3, 4, 8, 16),
    tasks=100,
    pipeline_repeats=2,
)
QUICK = Settings(
    repeats=1,
    round_trip_seconds=0.3,
    client_counts=(1, 4),
    publish_count=20_000,
    subscriber_counts=(1, 10),
    fan_out_seconds=1.5,
    worker_counts=(3,),
    tasks=30,
    pipeline_repeats=1,
)


@dataclass
class Row:
    measure: str
    ours: float
    baseline: float | None = None
    baseline_name: str = ""
    note: str = ""
    unit: str = ""

    @property
    def ratio(self) -> float | None:
        return None if not self.baseline else self.ours / self.baseline


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    speedup: dict[int, dict[str, float]] = field(default_factory=dict)
    delivery: dict[int, dict[str, float]] = field(default_factory=dict)


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

    def stop_all(self) -> None:
        for process in self.started:
            self.stop(process)


def describe(process: subprocess.Popen[str]) -> str:
    return " ".join(str(arg) for arg in process.args)  # type: ignore[union-attr]


def read_report(process: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
    """The next JSON line a peer prints, or an error with what it said on stderr."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = ""
    while not line and time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
    if not line:
        line = process.stdout.readline()
    if not line:
        error = process.stderr.read() if process.stderr and process.poll() is not None else ""
        raise RuntimeError(f"{describe(process)} reported nothing: {error}")
    report: dict[str, Any] = json.loads(line)
    return report


def run_to_exit(process: subprocess.Popen[str], timeout: float = 120.0) -> str:
    stdout, stderr = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"{describe(process)} exited {process.returncode}: {stderr}")
    return stdout or ""


def bench_request_reply(
    settings: Settings, processes: Processes, folder: Path, results: Results
) -> None:
    for clients in settings.client_counts:
        measured: dict[str, list[dict[str, float]]] = {"script": [], "bare": []}
        for repeat in range(settings.repeats):
            for kind in ("script", "bare"):
                progress(
                    f"request-reply: {kind} server, {clients} clients, "
                    f"run {repeat + 1}/{settings.repeats}"
                )
                endpoint = f"ipc://{folder}/reqrep-{kind}-{clients}-{repeat}"
                if kind == "script":
                    server = processes.script("server_req_repl.py", "--bind", endpoint)
                else:
                    server = processes.peer("rep-echo", endpoint)
                    read_report(server)
                runs = [
                    processes.peer("req-client", endpoint, str(settings.round_trip_seconds))
                    for _ in range(clients)
                ]
                reports = [read_report(client) for client in runs]
                for client in runs:
                    processes.stop(client)
                processes.stop(server)
                measured[kind].append(
                    {
                        "rate": sum(
                            report["round_trips"] / report["seconds"] for report in reports
                        ),
                        "median_us": statistics.median(report["median_us"] for report in reports),
                        "p99_us": max(report["p99_us"] for report in reports),
                    }
                )
        label = "1 client" if clients == 1 else f"{clients} clients"
        for key, name, unit in (
            ("rate", "round trips/s", "/s"),
            ("median_us", "median latency", " µs"),
            ("p99_us", "p99 latency", " µs"),
        ):
            results.rows.append(
                Row(
                    f"request-reply, {label}: {name}",
                    statistics.median(run[key] for run in measured["script"]),
                    statistics.median(run[key] for run in measured["bare"]),
                    "bare REP echo",
                    unit=unit,
                )
            )


def publisher_argv(kind: str, endpoint: str, count: int) -> list[str]:
    if kind == "script":
        return [
            sys.executable, str(ROOT / "server_broadcast.py"), "--bind", endpoint,
            "--interval", "0", "--count", str(count),
        ]  # fmt: skip
    return [sys.executable, str(PEERS), "pub-loop", endpoint, str(count)]


def time_publisher(processes: Processes, argv: Sequence[str]) -> float:
    started = time.perf_counter()
    run_to_exit(processes.start(argv))
    return time.perf_counter() - started


def bench_publish_rate(
    settings: Settings, processes: Processes, folder: Path, results: Results
) -> None:
    count = settings.publish_count
    startups: dict[str, list[float]] = {"script": [], "bare": []}
    fulls: dict[str, list[float]] = {"script": [], "bare": []}
    for repeat in range(settings.repeats):
        for kind in ("script", "bare"):
            progress(
                f"publish rate: {kind} publisher, {count} messages, "
                f"run {repeat + 1}/{settings.repeats}"
            )
            endpoint = f"ipc://{folder}/pub-{kind}-{repeat}"
            subscriber = processes.peer("sub-count", endpoint, "1", stdin=subprocess.PIPE)
            read_report(subscriber)
            # Time 1 message and N messages: the difference leaves out Python's start-up.
            startups[kind].append(time_publisher(processes, publisher_argv(kind, endpoint, 1)))
            fulls[kind].append(time_publisher(processes, publisher_argv(kind, endpoint, count)))
            processes.stop(subscriber)
    rates = {
        kind: (count - 1) / (statistics.median(fulls[kind]) - statistics.median(startups[kind]))
        for kind in fulls
    }
    results.rows.append(
        Row(
            "publish-subscribe: messages published/s, --interval 0",
            rates["script"],
            rates["bare"],
            "bare PUB loop, same payload",
            unit="/s",
        )
    )


def second_of(payload: str) -> float:
    return time.mktime(time.strptime(payload[len("TIME") :]))


def bench_fan_out(settings: Settings, processes: Processes, folder: Path, results: Results) -> None:
    interval = 0.01
    for subscribers in settings.subscriber_counts:
        progress(f"fan-out: {subscribers} subscribers at {1 / interval:g} messages/s")
        endpoint = f"ipc://{folder}/fan-out-{subscribers}"
        groups = [
            min(SUBSCRIBER_SOCKETS_PER_PROCESS, subscribers - start)
            for start in range(0, subscribers, SUBSCRIBER_SOCKETS_PER_PROCESS)
        ]
        peers = [
            processes.peer("sub-count", endpoint, str(size), stdin=subprocess.PIPE)
            for size in groups
        ]
        for peer in peers:
            read_report(peer)
        with (folder / f"publisher-{subscribers}.txt").open("w+") as publisher_output:
            publisher = processes.script(
                "server_broadcast.py", "--bind", endpoint, "--interval", str(interval),
                stdout=publisher_output,
            )  # fmt: skip
            started = time.monotonic()
            for peer in peers:
                read_report(peer, timeout=120)
            joined_after = time.monotonic() - started
            progress(f"fan-out: all {subscribers} subscribed after {joined_after:.1f} s; measuring")
            time.sleep(settings.fan_out_seconds)
            publisher.terminate()
            publisher.wait(timeout=30)
            publisher_output.seek(0)
            published = Counter(
                line.removeprefix("Sent ")
                for line in publisher_output.read().splitlines()
                if line.startswith("Sent ")
            )
        counts: list[dict[str, int]] = []
        for peer in peers:
            assert peer.stdin is not None
            peer.stdin.close()
            counts.extend(read_report(peer)["counts"])
            processes.stop(peer)
        # PUB keeps no history, so a subscriber misses what was sent before it joined: count
        # from the first whole second after its first message.
        lost, delivered = [], []
        for received in counts:
            joined = min(second_of(payload) for payload in received)
            expected = {p: n for p, n in published.items() if second_of(p) > joined}
            missing = sum(n - received.get(p, 0) for p, n in expected.items())
            lost.append(missing)
            delivered.append(1.0 - missing / max(1, sum(expected.values())))
        measured = statistics.median(
            sum(n for p, n in published.items() if second_of(p) > min(map(second_of, received)))
            for received in counts
        )
        results.rows.append(
            Row(
                f"fan-out, {subscribers} subscribers: messages lost, worst subscriber",
                max(lost),
                note=f"of {measured:.0f} counted each at {1 / interval:g}/s; "
                f"all subscribed in {joined_after:.1f} s",
            )
        )
        results.delivery[subscribers] = {
            "min": min(delivered),
            "median": statistics.median(delivered),
        }


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
    summary = run_to_exit(ventilator)
    makespan = float(re.search(r"^Elapsed: (\d+\.\d+) s", summary, re.MULTILINE)[1])  # type: ignore[index]
    work_ms: list[int] = []
    counts: list[int] = []
    for process in worker_processes:
        # SIGTERM, not SIGKILL: the worker exits cleanly and flushes what it printed.
        process.terminate()
        output, _ = process.communicate(timeout=30)
        workloads = [
            int(match) for match in re.findall(r"^Task from \S+: (\d+) ms$", output, re.MULTILINE)
        ]
        work_ms.append(sum(workloads))
        counts.append(len(workloads))
    factors = slow or [1.0] * workers
    total = sum(work_ms) / 1000
    return {
        "makespan": makespan,
        "ideal": total / sum(1 / factor for factor in factors),
        "round_robin": max(work * factor for work, factor in zip(work_ms, factors)) / 1000,
        "counts": counts,
        "total": total,
    }


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
    slow = [1.0, 1.0, 1.0, 3.0]
    progress(f"pipeline: {settings.tasks} tasks, 4 workers, one of them 3 times slower")
    run = pipeline_run(processes, folder, settings.tasks, 4, slow, "slow")
    results.rows.append(
        Row(
            "pipeline, 4 workers, one 3x slower: makespan vs ideal",
            run["makespan"],
            run["ideal"],
            "total work / capacity",
            unit=" s",
            note="tasks per worker (slow one last): " + ", ".join(map(str, run["counts"])),
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


def check_complete(results: Results, settings: Settings) -> list[str]:
    """What is missing from the table: a row per measure, and a finite number in each."""
    expected = 3 * len(settings.client_counts) + 1 + len(settings.subscriber_counts)
    expected += 2 * len(settings.worker_counts) + 1
    problems = []
    if len(results.rows) != expected:
        problems.append(f"expected {expected} rows, got {len(results.rows)}")
    for row in results.rows:
        for value in (row.ours, row.baseline):
            if value is not None and not math.isfinite(value):
                problems.append(f"{row.measure}: {value}")
    return problems


def plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (speedup, delivery) = plt.subplots(1, 2, figsize=(11, 4.2))
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
    subscribers = sorted(results.delivery)
    for key, label, style in (
        ("median", "median subscriber", "C0-o"),
        ("min", "worst subscriber", "C3:s"),
    ):
        delivery.plot(
            subscribers, [100 * results.delivery[s][key] for s in subscribers], style, label=label
        )
    delivery.set(
        xscale="log",
        xlabel="subscribers",
        ylabel="messages delivered (%)",
        ylim=(0, 105),
        title="Publish-subscribe fan-out at 100 messages/s",
    )
    delivery.set_xticks(subscribers, [str(s) for s in subscribers])
    delivery.legend(loc="lower left")
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


BENCHMARKS = {
    "request-reply": bench_request_reply,
    "publish": bench_publish_rate,
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
    raise_open_file_limit()
    results = Results()
    processes = Processes()
    try:
        with scratch_folder() as folder:
            for name, bench in BENCHMARKS.items():
                if not args.only or name in args.only:
                    bench(settings, processes, folder, results)
    finally:
        processes.stop_all()
    print_table(results)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": [vars(row) for row in results.rows],
                    "speedup": results.speedup,
                    "delivery": results.delivery,
                },
                indent=2,
            )
        )
    if args.plot:
        plot(results, args.plot)
    problems = [] if args.only else check_complete(results, settings)
    for problem in problems:
        print(f"incomplete: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
