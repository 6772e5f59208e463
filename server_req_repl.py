# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Request-reply, the server: a REP socket that answers each request with the request plus "*".

It binds tcp://127.0.0.1:5555, prints every request it receives and replies with the same bytes
followed by b"*". A request that is exactly STOP is answered (b"STOP*") and ends the server with
exit code 0. Ctrl-C or SIGTERM end it with exit code 130. With --curve-secret it encrypts with
CURVE, and with --curve-clients it lets in only the clients whose keys it holds.

Run it, then its partner in a second terminal:

    uv run server_req_repl.py
    uv run client_req_repl.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import signal
import struct
import sys
import time
from collections.abc import Iterator

import zmq
from zmq.utils import z85

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
MAX_MESSAGE_BYTES = 64 * 1024
# Connections queued before libzmq accepts them: past libzmq's 100, a joiner waits 1 s to retry.
LISTEN_BACKLOG = 1024
# Requests a peer may queue before libzmq stops reading from it (a DEALER can send many at once).
MAX_QUEUED_REQUESTS = 100
MAX_KEY_FILE_BYTES = 64 * 1024


def main() -> int:
    args = parse_arguments()
    print_lines_as_they_come()
    stop_on_first_signal()
    try:
        return serve(args, server_secret_key(args))
    except KeyFileError as error:
        print(error, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return interrupted("Interrupted: shutting down.")
    except BrokenPipeError:
        return output_closed()


def serve(args: argparse.Namespace, curve_secret_key: bytes | None) -> int:
    """The pattern: bind REP, then receive a request and send its reply, for ever."""
    with (
        zmq.Context() as context,
        only_clients_in(context, args.curve_clients),
        context.socket(zmq.REP) as responder,
        responder.get_monitor_socket(Refusals.EVENTS) as monitor,
        Refusals(monitor, curve=curve_secret_key is not None) as refusals,
    ):
        set_responder_limits(responder)
        become_curve_server(responder, curve_secret_key)
        try:
            responder.bind(args.bind)
        except zmq.ZMQError as error:
            print(f"Cannot bind: {error}", file=sys.stderr)
            return 1
        print(f"Request-reply server on {args.bind}. Waiting for requests (Ctrl-C to stop).")
        print_who_may_connect(args)

        while True:
            refusals.report()
            try:
                # A Frame (copy=False) says if more frames follow; a refused one is never copied.
                first = responder.recv(copy=False)
            except zmq.Again:
                continue
            if first.more:
                # Read to its end, keeping no frame, then answer: REP must, or the client waits.
                frames = 2
                while responder.recv(copy=False).more:
                    frames += 1
                print(f"Ignored a request of {frames} frames: expected 1.", file=sys.stderr)
                responder.send(b"ERROR: send the request as a single frame")
                continue
            request = first.bytes
            print(f"Received {printable_bytes(request)}")
            responder.send(request + b"*")
            if request == b"STOP":
                print("STOP received: shutting down.")
                return 0


def set_responder_limits(responder: zmq.Socket[bytes]) -> None:
    """Bound what any client can make this server hold, and how long anything may block."""
    # A client that has gone (the post's never reads STOP's reply) must not hold up the exit.
    responder.setsockopt(zmq.LINGER, 200)
    # libzmq drops a peer whose frame is over the cap.
    responder.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    # A DEALER may send many requests at once: past this, libzmq stops reading from it.
    responder.setsockopt(zmq.RCVHWM, MAX_QUEUED_REQUESTS)
    responder.setsockopt(zmq.SNDHWM, MAX_QUEUED_REQUESTS)
    # Blocking calls end every 0.1 s: Ctrl-C is acted on only when a blocking call returns.
    responder.setsockopt(zmq.RCVTIMEO, 100)
    responder.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
    drop_vanished_peers(responder)


def server_secret_key(args: argparse.Namespace) -> bytes | None:
    """This server's CURVE secret key, or None without CURVE."""
    if args.curve_secret is None:
        return None
    _, secret_key = read_key_pair(args.curve_secret)
    return secret_key


def read_client_keys(folder: str) -> set[bytes]:
    """The public keys in the client key files (NAME.key) of `folder`, each checked."""
    if not os.path.isdir(folder):
        raise KeyFileError(f"Cannot use {folder}: not a folder.")
    try:
        names = sorted(name for name in os.listdir(folder) if name.endswith(".key"))
    except OSError as error:
        raise KeyFileError(f"Cannot read {folder}: {error.strerror}.") from None
    if not names:
        raise KeyFileError(f"Cannot use {folder}: it holds no NAME.key file, so no client could.")
    keys = set()
    for name in names:
        path = os.path.join(folder, name)
        public_key, secret_key = read_key_file(path)
        if secret_key is not None:
            print(
                f"Warning: {path} holds a client's secret key: NAME.key is enough.", file=sys.stderr
            )
        keys.add(public_key)
    return keys


class AllowedKeys:
    """What pyzmq's authenticator asks about each client: is its key one of ours?"""

    def __init__(self, keys: set[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def print_who_may_connect(args: argparse.Namespace) -> None:
    """Say, with CURVE, whether any client with the server's key may connect or only some."""
    if args.curve_clients is not None:
        folder = args.curve_clients
        print(f"CURVE: encrypted; only clients with a public key file in {folder} may connect.")
    elif args.curve_secret is not None:
        print("CURVE: encrypted; any client that has this server's public key may connect.")


def become_curve_server(socket: zmq.Socket[bytes], secret_key: bytes | None) -> None:
    """With a key, encrypt every connection, proving to clients that this is the server."""
    if secret_key is None:
        return
    socket.curve_secretkey = secret_key
    socket.curve_server = True


@contextlib.contextmanager
def only_clients_in(
    context: zmq.Context[zmq.Socket[bytes]], folder: str | None, domain: str = "*"
) -> Iterator[None]:
    """With a folder, let only clients whose public key file is in it connect (ZAP)."""
    if folder is None:
        yield
        return
    # Imported only when needed: it brings in asyncio, ~35 ms more on every start-up.
    from zmq.auth.thread import ThreadAuthenticator

    allowed = AllowedKeys(read_client_keys(folder))
    # pyzmq's authenticator answers libzmq's ZAP requests from a thread, status 400 to refuse.
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve_callback(domain, credentials_provider=allowed)
    try:
        yield
    finally:
        authenticator.stop()


class Refusals:
    """The connections that libzmq refused during their handshake, as a socket monitor tells."""

    EVENTS = (
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    )
    # A refused client tries again about ten times a second: a line a second tells as much.
    REPEAT_SECONDS = 1.0

    def __init__(self, monitor: zmq.Socket[bytes] | None, curve: bool) -> None:
        self.monitor = monitor
        self.curve = curve
        self.last_line = ""
        self.printed_at = self.looked_at = -math.inf
        self.repeats = 0

    def __enter__(self) -> Refusals:
        return self

    def __exit__(self, *exception: object) -> None:
        self.print_pending()

    def report(self) -> None:
        """Print the refusals that the monitor has told of since the last look."""
        # Ten looks a second at most: the request-reply server calls this for every request.
        if time.monotonic() - self.looked_at < 0.1:
            return
        self.looked_at = time.monotonic()
        while self.monitor is not None and self.monitor.poll(0):
            event, value = recv_event(self.monitor)
            self.refused(event, value)
        if self.repeats and time.monotonic() - self.printed_at >= self.REPEAT_SECONDS:
            self.print_repeats()

    def refused(self, kind: int, error: int) -> None:
        """One line for a refused connection, or a count if the same line has just gone out."""
        line = why_refused(kind, error, self.curve)
        recent = time.monotonic() - self.printed_at < self.REPEAT_SECONDS
        if line == self.last_line and (recent or self.repeats):
            self.repeats += 1
            return
        if self.repeats:
            self.print_repeats()
        print(line, file=sys.stderr)
        self.last_line, self.printed_at = line, time.monotonic()

    def print_pending(self) -> None:
        """At exit: nothing is lost silently, not even refusals not yet looked at or counted."""
        self.looked_at = -math.inf
        self.report()
        if self.repeats:
            self.print_repeats()

    def print_repeats(self) -> None:
        count = plural(self.repeats, "more connection")
        print(f"Refused {count} for the same reason.", file=sys.stderr)
        self.repeats, self.printed_at = 0, time.monotonic()


def recv_event(monitor: zmq.Socket[bytes]) -> tuple[int, int]:
    """The next event on a monitor socket: what happened, and its value (a file descriptor, an
    errno or a ZAP status code, depending on the event)."""
    # Two frames: the event (16 bits) and its value (32 bits), then the endpoint, unused here.
    # Parsed here rather than with zmq.utils.monitor, which imports asyncio: ~35 ms on every start.
    head, _endpoint = monitor.recv_multipart()
    event, value = struct.unpack("=HI", head[:6])
    return event, value


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def why_refused(kind: int, error: int, curve: bool) -> str:
    """One line on a connection whose handshake failed, from its monitor event."""
    if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        # The peer hung up first: a client that found our security not to match its own does.
        ended = f"A connection ended during its handshake ({os.strerror(error)})"
        if curve:
            return f"{ended}: if it was a client, does it use CURVE, with this server's key?"
        return f"{ended}: if it was a client, does it use CURVE? This server does not."
    refused = "Refused a connection:"
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"{refused} the client's key is not in --curve-clients (ZAP status {error})."
    if error == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH and curve:
        return f"{refused} the client does not use CURVE (it needs --curve-server)."
    if error == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return (
            f"{refused} the client uses CURVE and this server does not "
            "(start it with --curve-secret)."
        )
    if error == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return f"{refused} its CURVE handshake did not decrypt (the client has a wrong server key)."
    return f"{refused} it broke the ZMTP handshake (libzmq protocol error {error:#x})."


class KeyFileError(Exception):
    """A CURVE key file or folder that cannot be used, in one line that names it."""


def read_key_pair(path: str) -> tuple[bytes, bytes]:
    """(public key, secret key) from a NAME.key_secret file."""
    public_key, secret_key = read_key_file(path)
    if secret_key is None:
        raise KeyFileError(f"Cannot use {path}: it holds a public key only; pass NAME.key_secret.")
    if os.stat(path).st_mode & 0o077:
        # As ssh does for its keys, though without refusing: the file works, but it leaks.
        print(f"Warning: others may read {path}; keep it secret: chmod 600 {path}", file=sys.stderr)
    return public_key, secret_key


def read_key_file(path: str) -> tuple[bytes, bytes | None]:
    """(public key, secret key or None) from a file that zmq.auth.create_certificates wrote."""
    # Imported here rather than at the top: only key files need it, and it costs every start ~8 ms.
    import zmq.auth

    if not zmq.has("curve"):
        raise KeyFileError(f"Cannot use {path}: this pyzmq was built without CURVE.")
    if not os.path.isfile(path):
        what = "not a file" if os.path.exists(path) else "no such file"
        raise KeyFileError(f"Cannot use {path}: {what}.")
    if os.path.getsize(path) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"Cannot use {path}: too big for a key file.")
    try:
        public_key, secret_key = zmq.auth.load_certificate(path)
    except OSError as error:
        raise KeyFileError(f"Cannot read {path}: {error.strerror}.") from None
    except ValueError:
        raise KeyFileError(f"Cannot use {path}: it holds no public key.") from None
    except IndexError:
        raise KeyFileError(f"Cannot use {path}: a key line in it has no '='.") from None
    if not is_z85_key(public_key) or not (secret_key is None or is_z85_key(secret_key)):
        raise KeyFileError(f"Cannot use {path}: a key in it is not 40 characters of Z85.")
    if secret_key is not None and zmq.curve_public(secret_key) != public_key:
        raise KeyFileError(f"Cannot use {path}: its public and secret keys are not a pair.")
    return public_key, secret_key


def is_z85_key(key: bytes) -> bool:
    """True for a CURVE key written as text: 40 characters of Z85 (ZeroMQ's base 85)."""
    try:
        return len(z85.decode(key)) == 32
    # Whatever z85.decode raises for text that is not Z85 (ValueError, KeyError, struct.error).
    except Exception:
        return False


def printable_bytes(data: bytes, limit: int = 200) -> str:
    """`data` as a bytes literal (escapes for all but printable ASCII), cut after `limit` bytes."""
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit]!r}... ({len(data):,} bytes)"


def drop_vanished_peers(socket: zmq.Socket[bytes]) -> None:
    """Drop an idle TCP peer within about five seconds of its host vanishing without a goodbye.

    TCP keepalive, not ZMTP heartbeats: the peer's kernel answers it even while the peer is too
    busy to read, and a busy peer must not be cut off. Not ZMQ_TCP_MAXRT either: Linux then also
    cuts off a live peer whose receive window has stayed closed that long.
    """
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
        # A second signal (uv run forwards SIGTERM; a second Ctrl-C) would break the clean-up.
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
    add_curve_server_arguments(parser)
    args = parser.parse_args()
    if args.curve_clients is not None and args.curve_secret is None:
        parser.error("--curve-clients needs --curve-secret")
    return args


def add_curve_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--curve-secret",
        metavar="FILE",
        help="this server's secret key file (NAME.key_secret, as zmq.auth.create_certificates "
        "writes it): encrypt with CURVE; clients then need --curve-server NAME.key",
    )
    parser.add_argument(
        "--curve-clients",
        metavar="DIR",
        help="with --curve-secret: let in only the clients whose public key file (NAME.key) is "
        "in DIR",
    )


if __name__ == "__main__":
    sys.exit(main())
