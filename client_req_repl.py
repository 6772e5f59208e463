# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Request-reply, the client: a REQ socket that sends requests and prints the replies.

It connects to tcp://127.0.0.1:5555, sends each MESSAGE in turn (by default "Hello world 1", as in
the post) and waits for each reply, then sends STOP, which ends the server, unless --no-stop is
given. If no reply comes within --timeout seconds it says so and exits with code 1.

Start the server first, in another terminal:

    uv run server_req_repl.py
    uv run client_req_repl.py
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import zmq

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


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
        description="Request-reply client: send requests, print replies, then send STOP."
    )
    parser.add_argument(
        "messages",
        nargs="*",
        default=["Hello world 1"],
        metavar="MESSAGE",
        help="requests to send, one at a time (default: 'Hello world 1')",
    )
    parser.add_argument(
        "--connect",
        default=DEFAULT_ENDPOINT,
        metavar="ENDPOINT",
        help=f"server endpoint, tcp:// or ipc:// (default: {DEFAULT_ENDPOINT})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for each reply before giving up (default: 5)",
    )
    parser.add_argument(
        "--no-stop", action="store_true", help="leave the server running: do not send STOP"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    context = zmq.Context()
    requester = context.socket(zmq.REQ)
    # At exit, STOP gets up to two seconds to reach the server: closing must not drop it, nor hang.
    requester.setsockopt(zmq.LINGER, 2000)
    try:
        requester.connect(args.connect)
    except zmq.ZMQError as error:
        print(f"Cannot connect: {error}", file=sys.stderr)
        context.destroy(linger=0)
        return 1

    try:
        for message in args.messages:
            # The bytes exactly as typed, even ones that are not UTF-8.
            requester.send(os.fsencode(message))
            # A finite wait for each reply: REQ would otherwise block forever with no server.
            if not wait_for_message(requester, args.timeout):
                print(
                    f"No reply from {args.connect} within {args.timeout:g} s. "
                    "Is the server running? Start it with: uv run server_req_repl.py",
                    file=sys.stderr,
                )
                # Nobody will take the queued request: do not wait for it at exit.
                requester.setsockopt(zmq.LINGER, 0)
                return 1
            reply = requester.recv()
            print(f"Received reply {reply!r}")
        if not args.no_stop:
            # The reply to STOP is not needed (the post's server sends none): LINGER delivers STOP.
            requester.send_string("STOP")
            print("Sent STOP: the server shuts down.")
        return 0
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        requester.setsockopt(zmq.LINGER, 0)
        return 130
    finally:
        requester.close()
        context.term()


if __name__ == "__main__":
    sys.exit(main())
