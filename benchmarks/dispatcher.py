"""Load-balancing dispatcher: each task goes to the first worker that asks for one.

The zguide's load-balancing pattern, bare, for the benchmark to set beside server_pipeline.py's
PUSH round-robin. A ROUTER socket binds ENDPOINT; each worker is a REQ socket (benchmarks/peers.py
asking-worker) that sends "ready" when it starts and its result after each task, and every request
it sends is answered with its next task. A busy worker does not ask, so it is given nothing: a
fast worker gets more tasks than a slow one. It waits for --workers workers, hands out the
workloads in --workloads (milliseconds, one a line), and prints one JSON line: the makespan, from
the first task sent to the last result, and the tasks and work each worker did.

    python benchmarks/dispatcher.py ipc:///tmp/tasks --workers 4 --workloads workloads.txt
    python benchmarks/peers.py asking-worker w0 ipc:///tmp/tasks     # four times
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, deque
from pathlib import Path

import zmq


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("endpoint", help="where workers connect, e.g. ipc:///tmp/tasks")
    parser.add_argument("--workers", type=int, required=True, help="workers to wait for")
    parser.add_argument("--workloads", type=Path, required=True, help="milliseconds, one a line")
    parser.add_argument("--timeout", type=float, default=30.0, help="give up after this silence")
    args = parser.parse_args()
    workloads = [int(line) for line in args.workloads.read_text().split()]

    with zmq.Context() as context, context.socket(zmq.ROUTER) as dispatcher:
        dispatcher.setsockopt(zmq.LINGER, 0)
        dispatcher.bind(args.endpoint)
        idle: deque[bytes] = deque()  # the workers waiting for a task, first come first served
        tasks_per_worker: Counter[str] = Counter()
        work_per_worker: Counter[str] = Counter()
        unsent = deque(workloads)
        results = 0
        started = None
        while results < len(workloads):
            # Start only when every worker is here, as server_pipeline.py does.
            if started is None and len(idle) == args.workers:
                started = time.monotonic()
            while started is not None and idle and unsent:
                dispatcher.send_multipart([idle.popleft(), b"", str(unsent.popleft()).encode()])
            if not dispatcher.poll(args.timeout * 1000):
                print(f"No worker asked for {args.timeout:g} s: giving up.", file=sys.stderr)
                return 1
            # A REQ socket's request through ROUTER: [its identity, empty delimiter, body...].
            worker, _, name, body = dispatcher.recv_multipart()
            if body != b"ready":
                results += 1
                tasks_per_worker[name.decode()] += 1
                work_per_worker[name.decode()] += int(body)
            idle.append(worker)
        assert started is not None
        makespan = time.monotonic() - started
    print(
        json.dumps(
            {
                "makespan": makespan,
                "tasks_per_worker": dict(tasks_per_worker),
                "work_ms_per_worker": dict(work_per_worker),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
