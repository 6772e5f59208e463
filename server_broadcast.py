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
import itertools
import signal
import sys
import time

import zmq

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"


def sleep(seconds: float) -> None:
    """time.sleep in 0.1 s slices: a Ctrl-C that lands just before a long sleep begins would
    otherwise be acted on only when the whole sleep is over."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(remaining, 0.1))


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Publish-subscribe publisher: broadcast 'TIME' + the current time.",
        epilog="Other machines cannot reach the default endpoint; pass --bind tcp://*:5556 to "
        "listen on every interface.",
    )
    parser.add_argument(
        "--bind",
        default=DEFAULT_ENDPOINT,
        metavar="ENDPOINT",
        help=f"ZeroMQ endpoint to bind, tcp:// or ipc:// (default: {DEFAULT_ENDPOINT})",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="pause between messages (default: 5); 0 publishes as fast as possible and prints "
        "a count every 100,000 messages instead of each message",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        metavar="N",
        help="stop after N messages (default: publish until stopped)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    # At exit, give queued messages one second to leave, then drop them: never hang on a slow peer.
    publisher.setsockopt(zmq.LINGER, 1000)
    try:
        publisher.bind(args.bind)
    except zmq.ZMQError as error:
        print(f"Cannot bind: {error}", file=sys.stderr)
        context.destroy(linger=0)
        return 1

    try:
        print(f"Publishing on {args.bind} every {args.interval:g} s (Ctrl-C to stop).")
        flat_out = args.interval == 0
        numbers = itertools.count(1) if args.count is None else range(1, args.count + 1)
        next_send = time.monotonic()
        for number in numbers:
            if not flat_out:
                # Sleep to a schedule, not a fixed pause, so the rate holds whatever a send costs.
                next_send += args.interval
                sleep(next_send - time.monotonic())
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
    except KeyboardInterrupt:
        print("Interrupted: shutting down.", file=sys.stderr)
        return 130
    finally:
        publisher.close()
        context.term()


if __name__ == "__main__":
    sys.exit(main())
