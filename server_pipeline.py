# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Pipeline (push-pull), the ventilator and the sink: hand out tasks, collect the results.

It binds a PUSH socket on tcp://127.0.0.1:5557 for tasks and a PULL socket on
tcp://127.0.0.1:5558 for results. It waits until --workers workers (3 by default) have connected,
then sends --tasks tasks (100), each a pickled (NAME, workload) tuple with a workload of 1-100
milliseconds of simulated work. PUSH deals the tasks round-robin to the connected workers. Once
every result is back it prints a summary and exits 0; if results stop coming for --timeout seconds
it says how many are missing and exits 1. Ctrl-C or SIGTERM stop it with exit code 130.

Start it, then three workers, each in its own terminal:

    uv run server_pipeline.py
    uv run client_pipeline.py
"""

from __future__ import annotations

import argparse
import io
import pickle
import random
import signal
import sys
import time
from collections import Counter

import zmq
from zmq.utils.monitor import recv_monitor_message

DEFAULT_TASKS_ENDPOINT = "tcp://127.0.0.1:5557"
DEFAULT_RESULTS_ENDPOINT = "tcp://127.0.0.1:5558"
MAX_MESSAGE_BYTES = 4096
MAX_WORKLOAD_MS = 10_000
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class RefuseGlobals(pickle.Unpickler):
    """Unpickles plain data only (tuples, strings, numbers): every class and function is refused."""

    def find_class(self, module: str, name: str) -> type:
        # A pickle rebuilds objects by calling globals it names, os.system included: allow none.
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def load_result(data: bytes) -> tuple[str, int]:
    """Return (worker name, workload in ms) from a result, or raise if it is anything else."""
    value = RefuseGlobals(io.BytesIO(data)).load()
    if not (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and type(value[1]) is int
        and 0 <= value[1] <= MAX_WORKLOAD_MS
    ):
        raise ValueError(
            f"expected (name, workload from 0 to {MAX_WORKLOAD_MS} ms), got {value!r:.80}"
        )
    return value


def wait_for_message(socket: zmq.Socket[bytes], timeout: float | None = None) -> bool:
    """Return True once `socket` has a message to receive, False after `timeout` seconds."""
    # Poll in 0.1 s slices rather than block: a Ctrl-C that lands just before a blocking call
    # begins is only acted on when that call returns.
    deadline = None if timeout is None else time.monotonic() + timeout
    while not socket.poll(100):
        if deadline is not None and time.monotonic() >= deadline:
            return False
    return True


def wait_for_workers(monitor: zmq.Socket[bytes], wanted: int) -> None:
    """Block until `wanted` workers have completed the ZeroMQ handshake with the ventilator."""
    connected = 0
    # A peer that fails its handshake (a port scanner, a stray HTTP client) was never counted,
    # but its DISCONNECTED event comes all the same, right after the failure.
    failed_handshakes = 0
    print(f"Waiting for {wanted} workers to connect.")
    while connected < wanted:
        wait_for_message(monitor)
        event = recv_monitor_message(monitor)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            connected += 1
        elif event != zmq.EVENT_DISCONNECTED:
            failed_handshakes += 1
            continue
        elif failed_handshakes:
            failed_handshakes -= 1
            continue
        else:
            connected -= 1
        print(f"Workers connected: {connected} of {wanted}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Pipeline ventilator and sink: send tasks to workers, collect their results.",
        epilog="Other machines cannot reach the default endpoints; pass --bind tcp://*:5557 "
        "--results tcp://*:5558 to listen on every interface.",
    )
    parser.add_argument(
        "name",
        nargs="?",
        default="ventilator",
        help="name sent with every task (default: %(default)s)",
    )
    parser.add_argument(
        "--bind",
        default=DEFAULT_TASKS_ENDPOINT,
        metavar="ENDPOINT",
        help=f"endpoint that hands out tasks (default: {DEFAULT_TASKS_ENDPOINT})",
    )
    parser.add_argument(
        "--results",
        default=DEFAULT_RESULTS_ENDPOINT,
        metavar="ENDPOINT",
        help=f"endpoint that collects results (default: {DEFAULT_RESULTS_ENDPOINT})",
    )
    parser.add_argument(
        "--tasks", type=int, default=100, metavar="N", help="tasks to send (default: 100)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=3,
        metavar="W",
        help="workers to wait for before sending the first task (default: 3)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up when no result has come for this long (default: 10)",
    )
    args = parser.parse_args()
    if args.tasks < 1 or args.workers < 1:
        parser.error("--tasks and --workers must be at least 1")
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    context = zmq.Context()
    ventilator = context.socket(zmq.PUSH)
    sink = context.socket(zmq.PULL)
    # PUSH deals tasks only to the workers it has when it sends, and a worker counts once its
    # handshake is done (a TCP accept is not enough). Monitor before bind to miss no early worker.
    monitor = ventilator.get_monitor_socket(
        zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILED
    )
    # At exit, tasks not yet taken by a worker that has gone are dropped after one second.
    ventilator.setsockopt(zmq.LINGER, 1000)
    sink.setsockopt(zmq.LINGER, 0)
    # Anyone who can connect can send results; libzmq disconnects a peer whose message is too big.
    sink.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    for socket, endpoint in ((ventilator, args.bind), (sink, args.results)):
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as error:
            print(f"Cannot bind: {error}", file=sys.stderr)
            context.destroy(linger=0)
            return 1

    try:
        print(f"Ventilator on {args.bind}, sink on {args.results} (Ctrl-C to stop).")
        wait_for_workers(monitor, args.workers)
        ventilator.disable_monitor()
        started = time.monotonic()
        total_work_ms = 0
        for _ in range(args.tasks):
            workload_ms = random.randint(1, 100)
            total_work_ms += workload_ms
            ventilator.send(pickle.dumps((args.name, workload_ms)))
        print(f"Sent {args.tasks} tasks, {total_work_ms} ms of work in all.")

        tasks_per_worker: Counter[str] = Counter()
        received = 0
        while received < args.tasks:
            if not wait_for_message(sink, args.timeout):
                missing = args.tasks - received
                print(
                    f"No result for {args.timeout:g} s: {missing} of {args.tasks} results missing.",
                    file=sys.stderr,
                )
                return 1
            frames = sink.recv_multipart()
            try:
                if len(frames) != 1:
                    raise ValueError(f"expected 1 frame, got {len(frames)}")
                worker_name, workload_ms = load_result(frames[0])
            except Exception as error:
                print(f"Ignored a result: {error}", file=sys.stderr)
                continue
            received += 1
            tasks_per_worker[worker_name] += 1
            print(f"Result {received}/{args.tasks} from {worker_name}: {workload_ms} ms")
        elapsed = time.monotonic() - started
    except KeyboardInterrupt:
        print("Interrupted: shutting down.", file=sys.stderr)
        return 130
    finally:
        monitor.close()
        ventilator.close()
        sink.close()
        context.term()

    print(f"All {args.tasks} results in.")
    for worker_name, count in sorted(tasks_per_worker.items()):
        print(f"  {worker_name}: {count} tasks")
    ideal = total_work_ms / 1000 / len(tasks_per_worker)
    print(f"Total simulated work: {total_work_ms / 1000:.2f} s")
    print(f"Elapsed: {elapsed:.2f} s (ideal with {len(tasks_per_worker)} workers: {ideal:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
