# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Publish-subscribe, the subscriber: a SUB socket that prints the messages it subscribed to.

It connects to tcp://127.0.0.1:5556, subscribes to messages starting with TIME, prints the next 5
(--count) and exits with code 0. Messages published before it connected are not replayed: a
subscriber sees only what is sent while it listens. With --timeout, a wait longer than that for
any one message ends it with exit code 1.

Start the publisher in another terminal (in either order: the subscriber keeps trying to connect):

    uv run server_broadcast.py
    uv run client_broadcast.py
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import zmq

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"


def wait_for_message(socket: zmq.Socket[bytes], timeout: float | None = None) -> bool:
    """Return True once `socket` has a message to receive, False after `timeout` seconds."""
    # Poll in 0.1 s slices rather than block: a Ctrl-C that lands just before a blocking call
    # begins is only acted on when that call returns.
    deadline = None if timeout is None else time.monotonic() + timeout
    while not socket.poll(100):
        if deadline is not None and time.monotonic() >= deadline:
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Publish-subscribe subscriber: print the messages that start with a topic."
    )
    parser.add_argument(
        "--connect",
        default=DEFAULT_ENDPOINT,
        metavar="ENDPOINT",
        help=f"publisher endpoint, tcp:// or ipc:// (default: {DEFAULT_ENDPOINT})",
    )
    parser.add_argument(
        "--topic",
        default="TIME",
        help="receive only messages that start with this prefix; '' receives all (default: TIME)",
    )
    parser.add_argument(
        "--count", type=int, default=5, metavar="N", help="messages to print (default: 5)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up if no message arrives for this long (default: wait for ever)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    context = zmq.Context()
    subscriber = context.socket(zmq.SUB)
    # All a SUB socket queues is its subscription: nothing worth waiting for at exit.
    subscriber.setsockopt(zmq.LINGER, 0)
    try:
        subscriber.connect(args.connect)
    except zmq.ZMQError as error:
        print(f"Cannot connect: {error}", file=sys.stderr)
        context.destroy(linger=0)
        return 1
    # Without a subscription a SUB socket receives nothing at all.
    subscriber.setsockopt_string(zmq.SUBSCRIBE, args.topic)

    try:
        print(
            f"Waiting for {args.count} messages starting with {args.topic!r} from {args.connect}."
        )
        for _ in range(args.count):
            if not wait_for_message(subscriber, args.timeout):
                print(
                    f"No message from {args.connect} within {args.timeout:g} s. "
                    "Is the publisher running? Start it with: uv run server_broadcast.py",
                    file=sys.stderr,
                )
                return 1
            frames = subscriber.recv_multipart()
            # Publishers may send any bytes: show what is not UTF-8 instead of crashing on it.
            print(" ".join(frame.decode("utf-8", errors="backslashreplace") for frame in frames))
        return 0
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    finally:
        subscriber.close()
        context.term()


if __name__ == "__main__":
    sys.exit(main())
