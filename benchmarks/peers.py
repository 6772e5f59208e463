"""Bare-pyzmq peers for the benchmark: the other end of each script, and the baselines.

Each runs as its own process, `python benchmarks/peers.py ROLE ARGS`, and prints one JSON line
when it is ready and one when it is done. run.py starts them; nobody needs to run them by hand.
Every time is time.monotonic(), which on Linux is one clock for every process on the machine, so
run.py can hand its peers a common start (a barrier) as a number on their stdin.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from collections import Counter

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message


def report(**values: object) -> None:
    print(json.dumps(values), flush=True)


def wait_for_start() -> float:
    """The common start that run.py writes on stdin once every peer is ready."""
    return float(sys.stdin.readline())


def become_curve_server(socket: zmq.Socket[bytes], secret_file: str | None) -> None:
    """With a NAME.key_secret file, encrypt every connection to `socket` with CURVE."""
    if secret_file is None:
        return
    _, secret_key = zmq.auth.load_certificate(secret_file)
    assert secret_key is not None, f"{secret_file} holds no secret key"
    socket.curve_secretkey = secret_key
    socket.curve_server = True


def become_curve_client(
    socket: zmq.Socket[bytes], server_file: str | None, secret_file: str | None
) -> None:
    """With the server's NAME.key and our NAME.key_secret, talk CURVE to that server only."""
    if server_file is None or secret_file is None:
        return
    server_key, _ = zmq.auth.load_certificate(server_file)
    public_key, secret_key = zmq.auth.load_certificate(secret_file)
    assert secret_key is not None, f"{secret_file} holds no secret key"
    socket.curve_serverkey = server_key
    socket.curve_publickey = public_key
    socket.curve_secretkey = secret_key


def rep_echo(endpoint: str, curve_secret: str | None) -> None:
    """The baseline for server_req_repl.py: the same reply, without printing."""
    context = zmq.Context()
    responder = context.socket(zmq.REP)
    become_curve_server(responder, curve_secret)
    responder.bind(endpoint)
    report(ready=True)
    while True:
        request = responder.recv()
        responder.send(request + b"*")


def req_client(
    endpoint: str, seconds: float, curve_server: str | None, curve_secret: str | None
) -> None:
    """Round trips from a common start for `seconds`: how many, and the latency of each.

    It warms up (connects, then 100 round trips), says it is ready and waits for the start on
    stdin. It keeps sending until the window's end, so the server is as busy at its last moment
    as at its first, but counts only the round trips that begin and end inside the window.
    """
    context = zmq.Context()
    requester = context.socket(zmq.REQ)
    become_curve_client(requester, curve_server, curve_secret)
    requester.connect(endpoint)
    for _ in range(100):
        requester.send(b"warm-up")
        requester.recv()
    report(ready=True)
    start = wait_for_start()
    end = start + seconds
    latencies = []
    now = time.monotonic()
    while now < end:
        requester.send(b"Hello world 1")
        requester.recv()
        after = time.monotonic()
        if now >= start and after <= end:
            latencies.append(after - now)
        now = after
    report(
        round_trips=len(latencies),
        seconds=seconds,
        latencies_us=[round(t * 1e6, 2) for t in latencies],
    )
    requester.close(linger=0)
    context.term()


def pub_loop(endpoint: str, count: int, curve_secret: str | None) -> None:
    """The baseline for server_broadcast.py --interval 0: the same messages, without printing."""
    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    become_curve_server(publisher, curve_secret)
    publisher.bind(endpoint)
    for _ in range(count):
        publisher.send_string("TIME" + time.asctime())
    publisher.close(linger=1000)
    context.term()


def pub_timed(endpoint: str, interval: float) -> None:
    """The baseline for server_broadcast.py --interval: the same messages on the same schedule,
    without printing, until EOF on stdin; then how many it sent with each payload."""
    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    publisher.bind(endpoint)
    report(ready=True)
    poller = zmq.Poller()
    poller.register(sys.stdin.fileno(), zmq.POLLIN)
    sent: Counter[str] = Counter()
    scheduled = time.monotonic()
    while True:
        # As the script does: to a schedule, starting afresh when it has fallen behind.
        scheduled += interval
        if scheduled < time.monotonic():
            scheduled = time.monotonic() + interval
        if poller.poll(max(0, int(1000 * (scheduled - time.monotonic())))):
            break
        time.sleep(max(0.0, scheduled - time.monotonic()))
        message = "TIME" + time.asctime()
        publisher.send_string(message)
        sent[message] += 1
    report(sent=sent)
    publisher.close(linger=1000)
    context.term()


def pub_idle(endpoint: str, backlog: int | None) -> None:
    """The baseline for joining server_broadcast.py: a PUB that binds, then waits for EOF."""
    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    if backlog is not None:
        publisher.setsockopt(zmq.BACKLOG, backlog)
    publisher.bind(endpoint)
    report(ready=True)
    sys.stdin.read()
    context.destroy(linger=0)


def sub_join(endpoint: str, sockets: int, timeout: float) -> None:
    """`sockets` SUB sockets that all connect at the common start; when did the last one join?

    Joined means the socket's monitor told of HANDSHAKE_SUCCEEDED: TCP is connected and both
    sides have agreed on ZMTP, so the subscription is on its way and the next message reaches
    it. Reports how many joined within `timeout` and the seconds from the start to the last.
    """
    context = zmq.Context()
    # Each SUB with its monitor is four libzmq sockets: the SUB, and a PAIR at each monitor end.
    context.set(zmq.MAX_SOCKETS, 4 * sockets + 16)
    poller = zmq.Poller()
    subscribers = []
    for _ in range(sockets):
        subscriber = context.socket(zmq.SUB)
        subscriber.setsockopt(zmq.LINGER, 0)
        monitor = subscriber.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        poller.register(monitor, zmq.POLLIN)
        subscribers.append(subscriber)
    report(ready=True)
    start = wait_for_start()
    time.sleep(max(0.0, start - time.monotonic()))
    for subscriber in subscribers:
        subscriber.connect(endpoint)
        subscriber.subscribe(b"TIME")
    waiting, last = sockets, start
    while waiting and time.monotonic() < start + timeout:
        for monitor, _ in poller.poll(100):
            recv_monitor_message(monitor)
            poller.unregister(monitor)
            waiting, last = waiting - 1, time.monotonic()
    report(joined=sockets - waiting, seconds=last - start)
    context.destroy(linger=0)


def sub_count(
    endpoint: str,
    sockets: int,
    hold: bool,
    curve_server: str | None,
    curve_secret: str | None,
) -> None:
    """`sockets` SUB sockets on one endpoint. Reports when every one has had a message, then
    counts each one's messages by payload until EOF on stdin, which ends the measurement.

    With `hold`, it reads nothing from then until EOF: libzmq's I/O thread takes in and keeps
    every message (RCVHWM 0), and Python counts them only at the end. A loss is then the
    publisher's, not 250 subscribers in one Python process falling behind, and the counting
    does not compete with the publisher for the CPU.
    """
    context = zmq.Context()
    context.set(zmq.MAX_SOCKETS, sockets + 16)
    poller = zmq.Poller()
    subscribers = []
    for _ in range(sockets):
        subscriber = context.socket(zmq.SUB)
        subscriber.setsockopt(zmq.LINGER, 0)
        # Retry every 10 ms, not 100: a publisher started after us is heard from sooner.
        subscriber.setsockopt(zmq.RECONNECT_IVL, 10)
        if hold:
            subscriber.setsockopt(zmq.RCVHWM, 0)
        become_curve_client(subscriber, curve_server, curve_secret)
        subscriber.connect(endpoint)
        subscriber.subscribe(b"TIME")
        poller.register(subscriber, zmq.POLLIN)
        subscribers.append(subscriber)
    poller.register(sys.stdin.fileno(), zmq.POLLIN)
    report(ready=True)
    counts: dict[zmq.Socket[bytes], Counter[bytes]] = {socket: Counter() for socket in subscribers}
    silent = set(subscribers)
    done = False
    while not done:
        for socket, _ in poller.poll():
            if socket == sys.stdin.fileno():
                done = True
                continue
            take_all(socket, counts[socket])
            if socket in silent:
                silent.discard(socket)
                if not silent:
                    report(joined=True)
                    if hold:
                        sys.stdin.read()
                        done = True
    # Take what is still on its way: until nothing has come for a quarter of a second.
    poller.unregister(sys.stdin.fileno())
    while arrived := poller.poll(250):
        for socket, _ in arrived:
            take_all(socket, counts[socket])
    report(
        counts=[
            {payload.decode(): n for payload, n in counts[socket].items()} for socket in subscribers
        ]
    )
    context.destroy(linger=0)


def take_all(socket: zmq.Socket[bytes], counts: Counter[bytes]) -> None:
    """Count every message waiting on `socket`: one poll for many messages."""
    while True:
        try:
            counts[socket.recv(zmq.NOBLOCK)] += 1
        except zmq.Again:
            return


def worker(name: str, tasks_endpoint: str, results_endpoint: str, slow: float) -> None:
    """A pipeline worker like client_pipeline.py whose work takes `slow` times as long.

    It takes a (run name, workload, task id) task, prints the line client_pipeline.py prints,
    and sends back (worker name, run name, workload, task id).
    """
    context = zmq.Context()
    receiver = context.socket(zmq.PULL)
    receiver.connect(tasks_endpoint)
    sender = context.socket(zmq.PUSH)
    sender.connect(results_endpoint)
    while True:
        run_name, workload_ms, task_id = pickle.loads(receiver.recv())
        print(f"Task from {run_name!r}: {workload_ms} ms", flush=True)
        time.sleep(workload_ms * slow / 1000)
        sender.send(pickle.dumps((name, run_name, workload_ms, task_id)))


def asking_worker(name: str, endpoint: str, slow: float) -> None:
    """A worker for benchmarks/dispatcher.py: it asks for a task whenever it is free.

    A REQ socket: the first request says it is ready, each one after carries the last result.
    """
    context = zmq.Context()
    requester = context.socket(zmq.REQ)
    requester.connect(endpoint)
    requester.send_multipart([name.encode(), b"ready"])
    while True:
        workload_ms = int(requester.recv())
        time.sleep(workload_ms * slow / 1000)
        requester.send_multipart([name.encode(), str(workload_ms).encode()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    roles = parser.add_subparsers(dest="role", required=True)

    def curve_server_option(role: argparse.ArgumentParser) -> None:
        role.add_argument("--curve-secret", metavar="FILE", help="be a CURVE server")

    def curve_client_options(role: argparse.ArgumentParser) -> None:
        role.add_argument("--curve-server", metavar="FILE", help="the server's NAME.key")
        role.add_argument("--curve-secret", metavar="FILE", help="our NAME.key_secret")

    echo = roles.add_parser("rep-echo")
    echo.add_argument("endpoint")
    curve_server_option(echo)
    client = roles.add_parser("req-client")
    client.add_argument("endpoint")
    client.add_argument("seconds", type=float)
    curve_client_options(client)
    publisher = roles.add_parser("pub-loop")
    publisher.add_argument("endpoint")
    publisher.add_argument("count", type=int)
    curve_server_option(publisher)
    timed = roles.add_parser("pub-timed")
    timed.add_argument("endpoint")
    timed.add_argument("interval", type=float)
    idle = roles.add_parser("pub-idle")
    idle.add_argument("endpoint")
    idle.add_argument("--backlog", type=int)
    joiner = roles.add_parser("sub-join")
    joiner.add_argument("endpoint")
    joiner.add_argument("sockets", type=int)
    joiner.add_argument("--timeout", type=float, default=30.0)
    subscriber = roles.add_parser("sub-count")
    subscriber.add_argument("endpoint")
    subscriber.add_argument("sockets", type=int)
    subscriber.add_argument("--hold", action="store_true", help="count only at the end")
    curve_client_options(subscriber)
    bench_worker = roles.add_parser("worker")
    bench_worker.add_argument("name")
    bench_worker.add_argument("tasks_endpoint")
    bench_worker.add_argument("results_endpoint")
    bench_worker.add_argument("--slow", type=float, default=1.0)
    asking = roles.add_parser("asking-worker")
    asking.add_argument("name")
    asking.add_argument("endpoint")
    asking.add_argument("--slow", type=float, default=1.0)
    args = parser.parse_args()
    try:
        if args.role == "rep-echo":
            rep_echo(args.endpoint, args.curve_secret)
        elif args.role == "req-client":
            req_client(args.endpoint, args.seconds, args.curve_server, args.curve_secret)
        elif args.role == "pub-loop":
            pub_loop(args.endpoint, args.count, args.curve_secret)
        elif args.role == "pub-timed":
            pub_timed(args.endpoint, args.interval)
        elif args.role == "pub-idle":
            pub_idle(args.endpoint, args.backlog)
        elif args.role == "sub-join":
            sub_join(args.endpoint, args.sockets, args.timeout)
        elif args.role == "sub-count":
            sub_count(args.endpoint, args.sockets, args.hold, args.curve_server, args.curve_secret)
        elif args.role == "worker":
            worker(args.name, args.tasks_endpoint, args.results_endpoint, args.slow)
        else:
            asking_worker(args.name, args.endpoint, args.slow)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
