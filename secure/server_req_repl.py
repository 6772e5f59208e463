# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Like ../server_req_repl.py, plus CURVE: encryption, and an allow-list of the clients' keys.

It binds tcp://127.0.0.1:5555, prints every request it receives and replies with the same bytes
followed by b"*". A request that is exactly STOP is answered too (b"STOP*"), then the server exits
with code 0. Ctrl-C or SIGTERM end it with exit code 130.

Make the keys (secure/README.md), run it, then its partner in a second terminal:

    uv run secure/server_req_repl.py --curve-clients keys/clients
    uv run secure/client_req_repl.py --curve-secret keys/client.key_secret
"""

import argparse
import contextlib
import io
import logging
import signal
import sys
from collections.abc import Iterator

import zmq
import zmq.auth.thread
import zmq.utils.z85

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
MAX_REQUEST_BYTES = 64 * 1024
# Requests one client may queue before libzmq stops reading from it (a DEALER can send many).
MAX_QUEUED_REQUESTS = 100
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# The authenticator's lines that refuse a client and name its key ("DENIED (CURVE) ...").
REFUSALS = logging.getLogger("refusals")
REFUSALS.addFilter(lambda record: record.getMessage().startswith("DENIED"))
REFUSALS.setLevel(logging.DEBUG)


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
    logging.basicConfig(format="Refused a client: %(message)s")
    try:
        return serve(args)
    except KeyboardInterrupt:
        print("Interrupted: shutting down.", file=sys.stderr)
        return 130
    except (OSError, ValueError) as error:
        print(f"Cannot use the keys: {error}", file=sys.stderr)
        return 1


def serve(args: argparse.Namespace) -> int:
    """The pattern: bind REP, then receive a request and send its reply, for ever."""
    with (
        zmq.Context() as context,
        let_in_only(context, args.curve_clients),
        context.socket(zmq.REP) as responder,
    ):
        # CURVE: every connection encrypted, and clients know it is this server by its key.
        responder.curve_secretkey = load_key(args.curve_secret, secret=True)
        responder.curve_server = True
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
        print(f"CURVE: encrypted; clients allowed: {args.curve_clients or 'any with our key'}.")
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


def load_key(path: str, secret: bool = False) -> bytes:
    """The key in NAME.key, or with secret=True in NAME.key_secret (zmq.auth's key files)."""
    try:
        key = zmq.auth.load_certificate(path)[1 if secret else 0] or b""
    except IndexError:  # pyzmq's way of saying that a key line has no "=".
        key = b""
    if len(key) != 40 or not set(key) <= set(zmq.utils.z85.Z85CHARS):
        raise ValueError(f"{path} holds no {'secret' if secret else 'public'} key")
    return key


@contextlib.contextmanager
def let_in_only(context: zmq.Context[zmq.Socket[bytes]], folder: "str | None") -> Iterator[None]:
    """Let in only the clients whose public key file (NAME.key) is in `folder`, or any client."""
    if folder is not None:
        zmq.auth.load_certificates(folder)  # Now, for one line that names a bad folder or file.
    # pyzmq's authenticator answers libzmq's ZAP requests from a thread, and logs each answer.
    authenticator = zmq.auth.thread.ThreadAuthenticator(context, log=REFUSALS)
    authenticator.start()
    authenticator.configure_curve(location=folder or zmq.auth.CURVE_ALLOW_ANY)
    try:
        yield
    finally:
        authenticator.stop()


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
    parser.add_argument("--curve-secret", default="keys/server.key_secret", metavar="FILE")
    parser.add_argument("--curve-clients", metavar="FOLDER", help="let in only their NAME.key")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
