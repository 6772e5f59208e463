# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Request-reply, the client: a REQ socket that sends requests and prints the replies.

It connects to tcp://127.0.0.1:5555, sends each MESSAGE in turn (by default "Hello world 1", as in
the post) and waits for each reply, then sends STOP, which ends the server, unless --no-stop is
given. If no reply comes within --timeout seconds it says why it thinks so and exits with code 1;
with --retries N it first tries N more times, each on a new socket (the zguide's Lazy Pirate).
With --curve-server it encrypts with CURVE and talks only to the server whose public key it holds.

Start the server first, in another terminal:

    uv run server_req_repl.py
    uv run client_req_repl.py
"""

from __future__ import annotations

import argparse
import io
import math
import os
import signal
import struct
import sys
import time

import zmq
from zmq.utils import z85

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
# The server takes requests of up to 64 KiB and replies with one byte more.
MAX_REPLY_BYTES = 64 * 1024 + 1
MAX_KEY_FILE_BYTES = 64 * 1024
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def main() -> int:
    args = parse_arguments()
    print_lines_as_they_come()
    stop_on_first_signal()
    try:
        return request_and_print_replies(args, client_keys(args))
    except KeyFileError as error:
        print(error, file=sys.stderr)
        return 1
    except Refused as refusal:
        print(refusal, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return interrupted("Interrupted.")
    except BrokenPipeError:
        return output_closed()


def request_and_print_replies(
    args: argparse.Namespace, curve_keys: tuple[bytes, bytes, bytes] | None
) -> int:
    """The pattern: connect REQ, then send each request and wait for its reply."""
    with zmq.Context() as context:
        try:
            requester, server = open_requester(context, args.connect, curve_keys)
        except zmq.ZMQError as error:
            print(f"Cannot connect: {error}", file=sys.stderr)
            return 1

        for message in args.messages:
            # The bytes exactly as typed, even ones that are not UTF-8.
            request = os.fsencode(message)
            requester.send(request)
            retries_left = args.retries
            # A finite wait for each reply: REQ would otherwise block for ever with no server.
            while not server.wait_for_reply(requester, args.timeout):
                if retries_left == 0:
                    print(server.why_no_reply(args.timeout), file=sys.stderr)
                    return 1
                retries_left -= 1
                requester, server = open_again(
                    context, requester, server, args, retries_left, curve_keys
                )
                requester.send(request)
            reply = requester.recv_multipart()
            print(f"Received reply {printable_frames(reply)}")
        if args.no_stop:
            return 0
        return server.stop(requester, args.timeout)


def open_requester(
    context: zmq.Context[zmq.Socket[bytes]],
    endpoint: str,
    curve_keys: tuple[bytes, bytes, bytes] | None,
) -> tuple[zmq.Socket[bytes], Server]:
    """A REQ socket connecting to `endpoint`, and the server as its monitor will tell of it."""
    requester = context.socket(zmq.REQ)
    become_curve_client(requester, curve_keys)
    # Nothing is worth delivering at exit: every request has had its reply or been given up.
    requester.setsockopt(zmq.LINGER, 0)
    # A reply much bigger than any request is not from our server: libzmq drops that peer.
    requester.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
    drop_vanished_peers(requester)
    server = Server(requester.get_monitor_socket(Server.EVENTS), endpoint, curve_keys is not None)
    requester.connect(endpoint)
    return requester, server


def open_again(
    context: zmq.Context[zmq.Socket[bytes]],
    requester: zmq.Socket[bytes],
    server: Server,
    args: argparse.Namespace,
    retries_left: int,
    curve_keys: tuple[bytes, bytes, bytes] | None,
) -> tuple[zmq.Socket[bytes], Server]:
    """The Lazy Pirate's retry: a REQ socket whose reply never came cannot send again, so close
    it without lingering and open a new one."""
    retry = args.retries - retries_left
    print(
        f"No reply from {args.connect} within {args.timeout:g} s: retrying, "
        f"{retry} of {args.retries}.",
        file=sys.stderr,
    )
    server.monitor.close()
    requester.close(linger=0)
    return open_requester(context, args.connect, curve_keys)


class Server:
    """The server as this client sees it, through the socket monitor."""

    EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILED

    def __init__(self, monitor: zmq.Socket[bytes], endpoint: str, curve: bool) -> None:
        self.monitor = monitor
        self.endpoint = endpoint
        self.curve = curve
        self.connected = self.ever_connected = self.lost_while_waiting = False
        self.handshakes_failed = 0

    def update(self) -> None:
        """Take the monitor's news; raise Refused if the server will never let us in."""
        while self.monitor.poll(0):
            event, value = recv_event(self.monitor)
            if event & HANDSHAKE_FAILED:
                check_not_refused(event, value, self.endpoint, self.curve)
                self.handshakes_failed += 1
                continue
            self.connected = event != zmq.EVENT_DISCONNECTED
            self.ever_connected |= self.connected
            self.lost_while_waiting |= not self.connected

    def wait_for_reply(self, requester: zmq.Socket[bytes], timeout: float) -> bool:
        """True once a reply is there, False after `timeout` seconds."""
        # 0.1 s slices, not one blocking call: Ctrl-C is acted on only when such a call returns.
        deadline = time.monotonic() + timeout
        while not requester.poll(100):
            self.update()
            if time.monotonic() >= deadline:
                return False
        # From here on a lost connection is news: it happened after this reply came.
        self.update()
        self.lost_while_waiting = False
        return True

    def why_no_reply(self, timeout: float) -> str:
        waited = f"No reply from {self.endpoint} within {timeout:g} s"
        if not self.ever_connected and self.curve and self.handshakes_failed:
            return (
                f"{waited}: the server cut off every CURVE handshake. Is --curve-server its "
                "public key file, and does the server use CURVE?"
            )
        if not self.ever_connected and self.handshakes_failed:
            return (
                f"{waited}: the server cut off every handshake. If it uses CURVE, pass "
                "--curve-server with its public key file."
            )
        if not self.ever_connected:
            return f"{waited}. Is the server running? Start it with: uv run server_req_repl.py"
        if self.lost_while_waiting:
            # libzmq connects again by itself, but REQ never sends a request twice.
            return (
                f"{waited}: the connection was lost (the server stopped, or refused a request "
                "over its size limit)."
            )
        if not self.connected:
            return (
                f"{waited}: the server had closed the connection, and nothing has answered since."
            )
        return f"{waited}: the server is connected but has not answered."

    def stop(self, requester: zmq.Socket[bytes], timeout: float) -> int:
        """Send STOP, then wait for the server to answer it (ours does) or to close the
        connection (the post's), unless the connection was lost before STOP could go."""
        self.update()
        if self.lost_while_waiting:
            print("Not sending STOP: the server has closed the connection.", file=sys.stderr)
            return 1
        requester.send(b"STOP")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if requester.poll(100):
                reply = printable_frames(requester.recv_multipart())
                print(f"Sent STOP: the server confirmed it ({reply}) and shuts down.")
                return 0
            self.update()
            if self.lost_while_waiting:
                print("Sent STOP: the server closed the connection.")
                return 0
        print(
            f"Sent STOP, but within {timeout:g} s the server neither confirmed it nor closed "
            "the connection.",
            file=sys.stderr,
        )
        return 1


def recv_event(monitor: zmq.Socket[bytes]) -> tuple[int, int]:
    """The next event on a monitor socket: what happened, and its value (a file descriptor, an
    errno or a ZAP status code, depending on the event)."""
    # Two frames: the event (16 bits) and its value (32 bits), then the endpoint, unused here.
    # Parsed here rather than with zmq.utils.monitor, which imports asyncio: ~35 ms on every start.
    head, _endpoint = monitor.recv_multipart()
    event, value = struct.unpack("=HI", head[:6])
    return event, value


class Refused(Exception):
    """The server refused this client for good: trying again would not help."""


def client_keys(args: argparse.Namespace) -> tuple[bytes, bytes, bytes] | None:
    """(server's public key, our public key, our secret key) for CURVE; None without it."""
    if args.curve_server is None:
        return None
    server_key, server_secret_key = read_key_file(args.curve_server)
    if server_secret_key is not None:
        print(
            f"Warning: {args.curve_server} holds the server's secret key, which should never "
            "leave the server: a client needs only NAME.key.",
            file=sys.stderr,
        )
    if args.curve_secret is None:
        # Made for this run only: a server with --curve-clients refuses it.
        public_key, secret_key = zmq.curve_keypair()
    else:
        public_key, secret_key = read_key_pair(args.curve_secret)
    return server_key, public_key, secret_key


def become_curve_client(socket: zmq.Socket[bytes], keys: tuple[bytes, bytes, bytes] | None) -> None:
    """With keys, encrypt the connection and talk only to the server whose key we hold."""
    if keys is None:
        return
    server_key, public_key, secret_key = keys
    socket.curve_serverkey = server_key
    socket.curve_publickey = public_key
    socket.curve_secretkey = secret_key


def check_not_refused(kind: int, value: int, endpoint: str, curve: bool) -> None:
    """Raise Refused for a failed handshake that trying again cannot mend."""
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        raise Refused(
            f"The server at {endpoint} refused this client's key (ZAP status {value}): its "
            "public key file must be in the server's --curve-clients folder."
        )
    mismatch = zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    if kind != zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL or value != mismatch:
        return
    if curve:
        raise Refused(
            f"This client and the server at {endpoint} disagree on security: this client "
            "uses CURVE and the server does not."
        )
    raise Refused(
        f"This client and the server at {endpoint} disagree on security: the server uses "
        "CURVE; pass --curve-server with its public key file."
    )


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


def printable_frames(frames: list[bytes]) -> str:
    """One line for a message: each frame as a bytes literal, at most three of them."""
    shown = " + ".join(printable_bytes(frame) for frame in frames[:3])
    return shown if len(frames) <= 3 else f"{shown} + ... ({len(frames)} frames)"


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


def seconds(text: str) -> float:
    """argparse type: a number of seconds above zero."""
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def zero_or_more(text: str) -> int:
    """argparse type: a whole number, 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is less than 0")
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
        type=endpoint,
        metavar="ENDPOINT",
        help=f"server endpoint, tcp:// or ipc:// (default: {DEFAULT_ENDPOINT})",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for each reply before giving up (default: 5)",
    )
    parser.add_argument(
        "--retries",
        type=zero_or_more,
        default=0,
        metavar="N",
        help="when a reply does not come within --timeout, send the request again on a new "
        "socket, up to N times; only for requests that are safe to repeat (default: 0)",
    )
    parser.add_argument(
        "--no-stop", action="store_true", help="leave the server running: do not send STOP"
    )
    add_curve_client_arguments(parser)
    args = parser.parse_args()
    if args.curve_secret is not None and args.curve_server is None:
        parser.error("--curve-secret needs --curve-server")
    return args


def add_curve_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--curve-server",
        metavar="FILE",
        help="the server's public key file (NAME.key, as zmq.auth.create_certificates writes "
        "it): encrypt with CURVE and talk only to that server",
    )
    parser.add_argument(
        "--curve-secret",
        metavar="FILE",
        help="with --curve-server: this client's secret key file (NAME.key_secret); without "
        "it, a key pair made for this run, which only a server without --curve-clients lets in",
    )


if __name__ == "__main__":
    sys.exit(main())
