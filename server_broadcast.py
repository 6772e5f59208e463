# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Publish-subscribe, the publisher: a PUB socket that broadcasts the time.

It binds tcp://127.0.0.1:5556 and every --interval seconds (5, as in the post) publishes one
message, "TIME" followed by time.asctime(), to every subscriber connected at that moment. Nobody
listening? The message is dropped: that is how PUB works. --count stops after N messages (exit 0);
Ctrl-C or SIGTERM stop it with exit code 130.

Run it, then one or more subscribers in other terminals:

    uv run server_broadcast.py
    uv run client_broadcast.py
"""

from __future__ import annotations

import argparse
import io
import itertools
import math
import os
import signal
import sys
import time

import zmq

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
# Subscribers send only their subscriptions, which are short.
MAX_SUBSCRIPTION_BYTES = 4096
# Connections the kernel queues before libzmq accepts them (libzmq's default is 100):
# past it, each further peer waits a second for its SYN to be retried, and a thousand
# subscribers starting at once would take seconds to join.
LISTEN_BACKLOG = 1024


def main() -> int:
    args = parse_arguments()
    print_lines_as_they_come()
    stop_on_first_signal()
    try:
        return publish(args)
    except KeyboardInterrupt:
        return interrupted("Interrupted: shutting down.")
    except BrokenPipeError:
        return output_closed()


def publish(args: argparse.Namespace) -> int:
    """The pattern: bind PUB, then send a message every interval to whoever is subscribed."""
    with zmq.Context() as context, context.socket(zmq.PUB) as publisher:
        # At exit, give queued messages half a second to leave, then drop them: never hang on a
        # slow subscriber.
        publisher.setsockopt(zmq.LINGER, 500)
        # Anyone who can connect can subscribe: libzmq drops a peer whose frame is over the cap.
        publisher.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
        publisher.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
        drop_vanished_peers(publisher)
        try:
            publisher.bind(args.bind)
        except zmq.ZMQError as error:
            print(f"Cannot bind: {error}", file=sys.stderr)
            return 1
        print(f"Publishing on {args.bind} every {args.interval:g} s (Ctrl-C to stop).")

        flat_out = args.interval == 0
        numbers = itertools.count(1) if args.count is None else range(1, args.count + 1)
        scheduled = time.monotonic()
        for number in numbers:
            if not flat_out:
                scheduled = sleep_until_next(scheduled, args.interval)
            message = "TIME" + time.asctime()
            publisher.send_string(message)
            if not flat_out:
                print(f"Sent {message}")
            elif number % 100_000 == 0:
                # Flat out, a line per message would swamp the terminal and slow the loop down.
                print(f"Sent {number} messages, the last: {message}")
        if flat_out:
            print(f"Sent {args.count} messages.")
        return 0


def sleep_until_next(scheduled: float, interval: float) -> float:
    """Sleep until `interval` after `scheduled`, and return that moment."""
    # To a schedule, not a fixed pause, so the rate holds whatever a send costs.
    scheduled += interval
    if scheduled < time.monotonic():
        # After a pause (SIGSTOP, a suspended laptop), start afresh rather than catch up in a
        # burst of every message missed.
        scheduled = time.monotonic() + interval
    sleep(scheduled - time.monotonic())
    return scheduled


def sleep(seconds: float) -> None:
    """time.sleep in 0.1 s slices: a Ctrl-C that lands just before a long sleep begins would
    otherwise be acted on only when the whole sleep is over."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(remaining, 0.1))


def drop_vanished_peers(socket: zmq.Socket[bytes]) -> None:
    """Drop an idle TCP peer within about five seconds of its host vanishing without a goodbye."""
    # TCP keepalive, not ZMTP heartbeats: the peer's kernel answers it even while the peer is
    # too busy to read, and a busy peer must not be cut off. Not ZMQ_TCP_MAXRT either: Linux
    # then also cuts off a live peer whose receive window has stayed closed that long.
    socket.setsockopt(zmq.TCP_KEEPALIVE, 1)
    socket.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 2)
    socket.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 1)
    socket.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)


def print_lines_as_they_come() -> None:
    """Flush each printed line, even into a pipe, and escape what the terminal cannot encode."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True, errors="backslashreplace")


def stop_on_first_signal() -> None:
    """Make Ctrl-C and SIGTERM raise KeyboardInterrupt once, and ignore any signal after it."""

    def stop(signum: int, frame: object) -> None:
        # `uv run` forwards the SIGTERM that its process group also got, and a second Ctrl-C
        # may come during the shutdown: either would break the clean-up with a traceback.
        # Blocked for the rest of the run, and handled by a no-op if already on their way
        # (SIG_IGN would make Python report those as errors).
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.signal(signal.SIGINT, ignore)
        signal.signal(signal.SIGTERM, ignore)
        raise KeyboardInterrupt

    def ignore(signum: int, frame: object) -> None:
        pass

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def interrupted(message: str) -> int:
    """Say why the script stops, if anyone still reads stderr, and return Ctrl-C's exit code."""
    try:
        print(message, file=sys.stderr)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
    return 130


def output_closed() -> int:
    """Stop quietly when our output's reader has gone (| head), as command-line tools do."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def at_least_one(text: str) -> int:
    """argparse type: a whole number, 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is less than 1")
    return value


def seconds_or_zero(text: str) -> float:
    """argparse type: a number of seconds, 0 or more."""
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds, 0 or more")
    return value


def endpoint(text: str) -> str:
    """argparse type: an endpoint that libzmq can take (pyzmq passes it on as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{text!r} holds bytes that are not UTF-8") from None
    return text


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Publish-subscribe publisher: broadcast 'TIME' + the current time.",
        epilog="Other machines cannot reach the default endpoint; pass --bind tcp://*:5556 to "
        "listen on every interface.",
    )
    parser.add_argument(
        "--bind",
        default=DEFAULT_ENDPOINT,
        type=endpoint,
        metavar="ENDPOINT",
        help=f"ZeroMQ endpoint to bind, tcp:// or ipc:// (default: {DEFAULT_ENDPOINT})",
    )
    parser.add_argument(
        "--interval",
        type=seconds_or_zero,
        default=5.0,
        metavar="SECONDS",
        help="pause between messages (default: 5); 0 publishes as fast as possible and prints "
        "a count every 100,000 messages instead of each message",
    )
    parser.add_argument(
        "--count",
        type=at_least_one,
        default=None,
        metavar="N",
        help="stop after N messages (default: publish until stopped)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
