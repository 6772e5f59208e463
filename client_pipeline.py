# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Pipeline (push-pull), a worker: pull tasks, do the work, push each result to the sink.

It connects a PULL socket to tcp://127.0.0.1:5557 for tasks and a PUSH socket to
tcp://127.0.0.1:5558 for results. Each task is a pickled (name, workload) tuple; the worker
sleeps for `workload` milliseconds to simulate the work, then sends (its own name, workload) to
the sink. It runs until Ctrl-C or SIGTERM (exit code 130), and may start before the ventilator.

Start the ventilator, then three workers, each in its own terminal:

    uv run server_pipeline.py
    uv run client_pipeline.py
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import platform
import signal
import sys
import time

import zmq

DEFAULT_TASKS_ENDPOINT = "tcp://127.0.0.1:5557"
DEFAULT_RESULTS_ENDPOINT = "tcp://127.0.0.1:5558"
MAX_MESSAGE_BYTES = 4096
MAX_WORKLOAD_MS = 10_000


class RefuseGlobals(pickle.Unpickler):
    """Unpickles plain data only (tuples, strings, numbers): every class and function is refused."""

    def find_class(self, module: str, name: str) -> type:
        # A pickle rebuilds objects by calling globals it names, os.system included: allow none.
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def load_task(data: bytes) -> tuple[str, int]:
    """Return (sender name, workload in ms) from a task, or raise if it is anything else."""
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


def sleep(seconds: float) -> None:
    """time.sleep in 0.1 s slices: a Ctrl-C that lands just before a long sleep begins would
    otherwise be acted on only when the whole sleep is over."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(remaining, 0.1))


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Pipeline worker: pull tasks, simulate the work, push results to the sink."
    )
    parser.add_argument(
        "name", nargs="?", default=None, help="name sent with every result (default: HOST-PID)"
    )
    parser.add_argument(
        "--connect",
        default=DEFAULT_TASKS_ENDPOINT,
        metavar="ENDPOINT",
        help=f"ventilator endpoint to pull tasks from (default: {DEFAULT_TASKS_ENDPOINT})",
    )
    parser.add_argument(
        "--results",
        default=DEFAULT_RESULTS_ENDPOINT,
        metavar="ENDPOINT",
        help=f"sink endpoint to push results to (default: {DEFAULT_RESULTS_ENDPOINT})",
    )
    args = parser.parse_args()
    worker_name = args.name or f"{platform.node()}-{os.getpid()}"
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    context = zmq.Context()
    receiver = context.socket(zmq.PULL)
    sender = context.socket(zmq.PUSH)
    # Tasks are tiny: a bigger message is not from our ventilator, and libzmq drops that peer.
    receiver.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    receiver.setsockopt(zmq.LINGER, 0)
    # Block for 0.1 s at most per call: a Ctrl-C that lands just before a blocking call begins
    # is only acted on when the call returns.
    receiver.setsockopt(zmq.RCVTIMEO, 100)
    # At exit, queued results get half a second to reach the sink, then are dropped: a live sink
    # takes them in milliseconds, and a dead one must not hold up Ctrl-C.
    sender.setsockopt(zmq.LINGER, 500)
    for socket, endpoint in ((receiver, args.connect), (sender, args.results)):
        try:
            socket.connect(endpoint)
        except zmq.ZMQError as error:
            print(f"Cannot connect: {error}", file=sys.stderr)
            context.destroy(linger=0)
            return 1

    try:
        print(f"Worker {worker_name}: tasks from {args.connect}, results to {args.results}.")
        print("Waiting for tasks (Ctrl-C to stop).")
        while True:
            try:
                frames = receiver.recv_multipart()
            except zmq.Again:
                continue
            try:
                if len(frames) != 1:
                    raise ValueError(f"expected 1 frame, got {len(frames)}")
                sender_name, workload_ms = load_task(frames[0])
            except Exception as error:
                print(f"Ignored a task: {error}", file=sys.stderr)
                continue
            print(f"Task from {sender_name}: {workload_ms} ms")
            sleep(workload_ms / 1000)
            sender.send(pickle.dumps((worker_name, workload_ms)))
    except KeyboardInterrupt:
        print("Interrupted: shutting down.", file=sys.stderr)
        return 130
    finally:
        receiver.close()
        sender.close()
        context.term()


if __name__ == "__main__":
    sys.exit(main())
