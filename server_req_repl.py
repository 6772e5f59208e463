# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Request-reply, the server: a REP socket that answers each request with the request plus "*".

It binds tcp://127.0.0.1:5555, prints every request it receives and replies with the same bytes
followed by b"*". A request that is exactly STOP is answered (b"STOP*") and ends the server with
exit code 0. Ctrl-C or SIGTERM end it with exit code 130.

Run it, then its partner in a second terminal:

    uv run server_req_repl.py
    uv run client_req_repl.py
"""

from __future__ import annotations

import argparse
import signal
import sys

import zmq

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
MAX_MESSAGE_BYTES = 64 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Request-reply server: reply to each request with the request plus '*'.",
        epilog="Other machines cannot reach the default endpoint; pass --bind tcp://*:5555 to "
        "listen on every interface.",
    )
    parser.add_argument(
        "--bind",
        default=DEFAULT_ENDPOINT,
        metavar="ENDPOINT",
        help=f"ZeroMQ endpoint to bind, tcp:// or ipc:// (default: {DEFAULT_ENDPOINT})",
    )
    args = parser.parse_args()
    # SIGTERM (kill, a service manager) stops the server the same way Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    context = zmq.Context()
    responder = context.socket(zmq.REP)
    # At exit, a live client takes its reply within milliseconds; one that has gone (the post's
    # client never reads the reply to STOP) must not hold the exit up for longer than this.
    responder.setsockopt(zmq.LINGER, 200)
    # Anyone who can connect can send; libzmq disconnects a peer whose message is over the cap.
    responder.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    # Block for 0.1 s at most per call: a Ctrl-C that lands just before a blocking call begins
    # is only acted on when the call returns.
    responder.setsockopt(zmq.RCVTIMEO, 100)
    try:
        responder.bind(args.bind)
    except zmq.ZMQError as error:
        print(f"Cannot bind: {error}", file=sys.stderr)
        context.destroy(linger=0)
        return 1

    try:
        print(f"Request-reply server on {args.bind}. Waiting for requests (Ctrl-C to stop).")
        while True:
            try:
                frames = responder.recv_multipart()
            except zmq.Again:
                continue
            if len(frames) != 1:
                # REP must answer every request, or that client waits forever.
                print(f"Ignored a request of {len(frames)} frames: expected 1.", file=sys.stderr)
                responder.send(b"ERROR: send the request as a single frame")
                continue
            request = frames[0]
            print(f"Received {request!r}")
            responder.send(request + b"*")
            if request == b"STOP":
                print("STOP received: shutting down.")
                return 0
    except KeyboardInterrupt:
        print("Interrupted: shutting down.", file=sys.stderr)
        return 130
    finally:
        responder.close()
        context.term()


if __name__ == "__main__":
    sys.exit(main())
