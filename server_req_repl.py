# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Request-reply, the server: a REP socket that answers each request with the request plus "*".

It binds tcp://127.0.0.1:5555, prints every request it receives and replies with the same bytes
followed by b"*". A request that is exactly STOP is answered too (b"STOP*"), then the server exits
with code 0. Ctrl-C or SIGTERM end it with exit code 130.

Run it, then its partner in a second terminal:

    uv run server_req_repl.py
    uv run client_req_repl.py
"""

import argparse
import io
import signal
import sys

import zmq

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
MAX_REQUEST_BYTES = 64 * 1024
# Requests one client may queue before libzmq stops reading from it (a DEALER can send many).
MAX_QUEUED_REQUESTS = 100
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def main() -> int:
    args = parse_arguments()
    if isinstance(sys.stdout, io.TextIOWrapper):  # Each line at once, even into a pipe (| tee).
        sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")
    # Ended quietly by SIGPIPE, as command-line tools are, once our reader has gone (| head).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # Held back until the socket is bound: an interrupted set-up could leave term() waiting.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        return serve(args)
    except KeyboardInterrupt:
        print("Interrupted: shutting down.", file=sys.stderr)
        return 130


def serve(args: argparse.Namespace) -> int:
    """The pattern: bind REP, then receive a request and send its reply, for ever."""
    with zmq.Context() as context, context.socket(zmq.REP) as responder:
        # At exit, STOP's reply gets 0.2 s to leave: the post's client never reads it.
        responder.setsockopt(zmq.LINGER, 200)
        # libzmq drops a client that sends a bigger frame (it caps frames, not whole messages).
        responder.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        responder.setsockopt(zmq.RCVHWM, MAX_QUEUED_REQUESTS)
        responder.setsockopt(zmq.SNDHWM, MAX_QUEUED_REQUESTS)
        # Waits of 0.1 s at most: a signal that lands just as a wait begins is seen as it ends.
        responder.setsockopt(zmq.RCVTIMEO, 100)
        set_listen_backlog_and_keepalive(responder)
        try:
            responder.bind(args.bind)
        except (zmq.ZMQError, UnicodeError) as error:
            print(f"Cannot bind: {error}", file=sys.stderr)
            return 1
        print(f"Request-reply server on {args.bind}. Waiting for requests (Ctrl-C to stop).")
        signal.pthread_sigmask(signal.SIG_SETMASK, [])  # Ctrl-C and SIGTERM stop it from here on.

        while True:
            try:
                # A Frame (copy=False) says whether more frames follow; none is kept.
                first = responder.recv(copy=False)
            except zmq.Again:  # No request for 0.1 s (RCVTIMEO): wait again.
                continue
            if first.more:
                frames = 2
                while responder.recv(copy=False).more:
                    frames += 1
                print(f"Ignored a request of {frames} frames: expected 1.", file=sys.stderr)
                # REP must answer every request, or that client would wait for ever.
                responder.send(b"ERROR: send the request as a single frame")
                continue
            request = first.bytes
            print(f"Received {printable_bytes(request)}")
            responder.send(request + b"*")
            if request == b"STOP":
                print("STOP received: shutting down.")
                return 0


def set_listen_backlog_and_keepalive(socket: zmq.Socket[bytes]) -> None:
    """Take a thousand clients joining at once, and drop one whose host vanished."""
    # libzmq's backlog of 100 makes the 101st joiner wait a second to try again.
    socket.setsockopt(zmq.BACKLOG, 1024)
    # An idle connection costs a file descriptor until its handshake ends: 3 s, not libzmq's 30.
    socket.setsockopt(zmq.HANDSHAKE_IVL, 3000)
    # TCP keepalive: a peer's kernel answers it even while the peer is busy, so only a host
    # that has gone (unplugged, powered off) is dropped, within about 5 s of going quiet.
    socket.tcp_keepalive, socket.tcp_keepalive_idle = 1, 2  # On, after 2 s of quiet;
    socket.tcp_keepalive_intvl, socket.tcp_keepalive_cnt = 1, 3  # 3 probes, 1 s apart.


def printable_bytes(data: bytes, limit: int = 200) -> str:
    """`data` as a bytes literal (escapes for all but printable ASCII), cut after `limit` bytes."""
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit]!r}... ({len(data):,} bytes)"


def stop(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM: stop once; a second signal cannot break the clean-up."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # Any later one waits, blocked.
    for signum in STOP_SIGNALS:  # One already delivered runs a handler that does nothing.
        signal.signal(signum, lambda *_: None)
    raise KeyboardInterrupt


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Request-reply server: reply to each request with the request plus '*'. "
        "A request of STOP is answered, then the server exits.",
        epilog="Other machines cannot reach the default endpoint: pass --bind tcp://*:5555 to "
        "listen on every interface (see secure/ before you do so on an untrusted network).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--bind", default=DEFAULT_ENDPOINT, metavar="ENDPOINT",
        help="where to listen: tcp://HOST:PORT, or ipc://PATH",
    )  # fmt: skip
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
