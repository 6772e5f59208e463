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
import io
import os
import signal
import sys

import zmq

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
MAX_MESSAGE_BYTES = 64 * 1024
# Connections the kernel queues before libzmq accepts them (libzmq's default is 100):
# past it, each further peer waits a second for its SYN to be retried, and a thousand
# subscribers starting at once would take seconds to join.
LISTEN_BACKLOG = 1024
# Requests a peer may queue before libzmq stops reading from it (a DEALER can send many at once).
MAX_QUEUED_REQUESTS = 100


def main() -> int:
    args = parse_arguments()
    print_lines_as_they_come()
    stop_on_first_signal()
    try:
        return serve(args)
    except KeyboardInterrupt:
        return interrupted("Interrupted: shutting down.")
    except BrokenPipeError:
        return output_closed()


def serve(args: argparse.Namespace) -> int:
    """The pattern: bind REP, then receive a request and send its reply, for ever."""
    with zmq.Context() as context, context.socket(zmq.REP) as responder:
        # At exit, a live client takes its reply within milliseconds; one that has gone (the
        # post's client never reads the reply to STOP) must not hold the exit up longer than this.
        responder.setsockopt(zmq.LINGER, 200)
        # Anyone who can connect can send: libzmq drops a peer whose frame is over the cap, and
        # the queue limits bound what one peer can make this process hold.
        responder.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        responder.setsockopt(zmq.RCVHWM, MAX_QUEUED_REQUESTS)
        responder.setsockopt(zmq.SNDHWM, MAX_QUEUED_REQUESTS)
        # Block for 0.1 s at most per call: a Ctrl-C that lands just before a blocking call begins
        # is only acted on when the call returns.
        responder.setsockopt(zmq.RCVTIMEO, 100)
        responder.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
        drop_vanished_peers(responder)
        try:
            responder.bind(args.bind)
        except zmq.ZMQError as error:
            print(f"Cannot bind: {error}", file=sys.stderr)
            return 1
        print(f"Request-reply server on {args.bind}. Waiting for requests (Ctrl-C to stop).")

        while True:
            try:
                # Frames that stay in libzmq's memory: a request is not copied to be refused.
                frames = responder.recv_multipart(copy=False)
            except zmq.Again:
                continue
            if len(frames) != 1:
                # REP must answer every request, or that client waits for ever.
                print(f"Ignored a request of {len(frames)} frames: expected 1.", file=sys.stderr)
                responder.send(b"ERROR: send the request as a single frame")
                continue
            request = frames[0].bytes
            print(f"Received {printable_bytes(request)}")
            responder.send(request + b"*")
            if request == b"STOP":
                print("STOP received: shutting down.")
                return 0


def printable_bytes(data: bytes, limit: int = 200) -> str:
    """`data` as a bytes literal (escapes for all but printable ASCII), cut after `limit` bytes."""
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit]!r}... ({len(data):,} bytes)"


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


def endpoint(text: str) -> str:
    """argparse type: an endpoint that libzmq can take (pyzmq passes it on as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{text!r} holds bytes that are not UTF-8") from None
    return text


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Request-reply server: reply to each request with the request plus '*'.",
        epilog="Other machines cannot reach the default endpoint; pass --bind tcp://*:5555 to "
        "listen on every interface.",
    )
    parser.add_argument(
        "--bind",
        default=DEFAULT_ENDPOINT,
        type=endpoint,
        metavar="ENDPOINT",
        help=f"ZeroMQ endpoint to bind, tcp:// or ipc:// (default: {DEFAULT_ENDPOINT})",
    )
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
