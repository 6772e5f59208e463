"""Bare-pyzmq peers for the benchmark: the other end of each script, and the baselines.

Each runs as its own process, `python benchmarks/peers.py ROLE ARGS`, and prints one JSON line
when it is done. run.py starts them; nobody needs to run them by hand.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import time
from collections import Counter

import zmq


def report(**values: object) -> None:
    print(json.dumps(values), flush=True)


def rep_echo(endpoint: str) -> None:
    """The baseline for server_req_repl.py: the same reply, without printing."""
    context = zmq.Context()
    responder = context.socket(zmq.REP)
    responder.bind(endpoint)
    report(ready=True)
    while True:
        request = responder.recv()
        responder.send(request + b"*")


def req_client(endpoint: str, seconds: float) -> None:
    """Round trips for `seconds`: how many, and the latency of each."""
    context = zmq.Context()
    requester = context.socket(zmq.REQ)
    requester.connect(endpoint)
    requester.send(b"warm-up")
    requester.recv()
    latencies = []
    started = time.perf_counter()
    deadline = started + seconds
    now = started
    while now < deadline:
        requester.send(b"Hello world 1")
        requester.recv()
        after = time.perf_counter()
        latencies.append(after - now)
        now = after
    latencies.sort()
    report(
        round_trips=len(latencies),
        seconds=now - started,
        median_us=statistics.median(latencies) * 1e6,
        p99_us=latencies[int(len(latencies) * 0.99)] * 1e6,
    )
    requester.close(linger=0)
    context.term()


def pub_loop(endpoint: str, count: int) -> None:
    """The baseline for server_broadcast.py --interval 0: the same messages, without printing."""
    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    publisher.bind(endpoint)
    for _ in range(count):
        publisher.send_string("TIME" + time.asctime())
    publisher.close(linger=1000)
    context.term()


def sub_count(endpoint: str, sockets: int) -> None:
    """`sockets` SUB sockets on one endpoint. Reports when every one has had a message, then
    counts each one's messages by payload until EOF on stdin, which ends the measurement."""
    context = zmq.Context()
    context.set(zmq.MAX_SOCKETS, sockets + 16)
    poller = zmq.Poller()
    subscribers = []
    for _ in range(sockets):
        subscriber = context.socket(zmq.SUB)
        subscriber.setsockopt(zmq.LINGER, 0)
        subscriber.connect(endpoint)
        subscriber.subscribe(b"TIME")
        poller.register(subscriber, zmq.POLLIN)
        subscribers.append(subscriber)
    poller.register(sys.stdin.fileno(), zmq.POLLIN)
    report(ready=True)
    counts: dict[zmq.Socket[bytes], Counter[str]] = {socket: Counter() for socket in subscribers}
    silent = set(subscribers)
    done = False
    while not done:
        for socket, _ in poller.poll():
            if socket == sys.stdin.fileno():
                done = True
                continue
            counts[socket][socket.recv().decode()] += 1
            if socket in silent:
                silent.discard(socket)
                if not silent:
                    report(joined=True)
    # Take what is still on its way: until nothing has come for a quarter of a second.
    poller.unregister(sys.stdin.fileno())
    while arrived := poller.poll(250):
        for socket, _ in arrived:
            counts[socket][socket.recv().decode()] += 1
    report(counts=[dict(counts[socket]) for socket in subscribers])
    context.destroy(linger=0)


def worker(name: str, tasks_endpoint: str, results_endpoint: str, slow: float) -> None:
    """A pipeline worker like client_pipeline.py whose work takes `slow` times as long."""
    context = zmq.Context()
    receiver = context.socket(zmq.PULL)
    receiver.connect(tasks_endpoint)
    sender = context.socket(zmq.PUSH)
    sender.connect(results_endpoint)
    while True:
        run_name, workload_ms = pickle.loads(receiver.recv())
        print(f"Task from bench: {workload_ms} ms", flush=True)
        time.sleep(workload_ms * slow / 1000)
        sender.send(pickle.dumps((name, run_name, workload_ms)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    roles = parser.add_subparsers(dest="role", required=True)
    roles.add_parser("rep-echo").add_argument("endpoint")
    client = roles.add_parser("req-client")
    client.add_argument("endpoint")
    client.add_argument("seconds", type=float)
    publisher = roles.add_parser("pub-loop")
    publisher.add_argument("endpoint")
    publisher.add_argument("count", type=int)
    subscriber = roles.add_parser("sub-count")
    subscriber.add_argument("endpoint")
    subscriber.add_argument("sockets", type=int)
    bench_worker = roles.add_parser("worker")
    bench_worker.add_argument("name")
    bench_worker.add_argument("tasks_endpoint")
    bench_worker.add_argument("results_endpoint")
    bench_worker.add_argument("--slow", type=float, default=1.0)
    args = parser.parse_args()
    try:
        if args.role == "rep-echo":
            rep_echo(args.endpoint)
        elif args.role == "req-client":
            req_client(args.endpoint, args.seconds)
        elif args.role == "pub-loop":
            pub_loop(args.endpoint, args.count)
        elif args.role == "sub-count":
            sub_count(args.endpoint, args.sockets)
        else:
            worker(args.name, args.tasks_endpoint, args.results_endpoint, args.slow)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
