# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Publish-subscribe, the subscriber: a SUB socket that prints the messages it subscribed to.

It connects to tcp://127.0.0.1:5556, subscribes to messages starting with TIME, prints the next 5
(--count) and exits with code 0. Messages published before it connected are not replayed: a
subscriber sees only what is sent while it listens. With --timeout, a wait longer than that for
any one message ends it with exit code 1. With --curve-server it encrypts with CURVE and listens
only to the publisher whose public key it holds.

Start the publisher in another terminal (in either order: the subscriber keeps trying to connect):

    uv run server_broadcast.py
    uv run client_broadcast.py
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

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
# The publisher's messages are about 30 bytes: a frame far bigger is not from it.
MAX_MESSAGE_BYTES = 16 * 1024
SHOWN_CHARACTERS = 300
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
        return print_messages(args, client_keys(args))
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


def print_messages(args: argparse.Namespace, curve_keys: tuple[bytes, bytes, bytes] | None) -> int:
    """The pattern: connect SUB, subscribe to a topic, then print each message that comes."""
    with (
        zmq.Context() as context,
        context.socket(zmq.SUB) as subscriber,
        subscriber.get_monitor_socket(Connection.EVENTS) as monitor,
    ):
        set_subscriber_limits(subscriber)
        become_curve_client(subscriber, curve_keys)
        try:
            subscriber.connect(args.connect)
        except zmq.ZMQError as error:
            print(f"Cannot connect: {error}", file=sys.stderr)
            return 1
        # Without a subscription a SUB socket receives nothing at all. The bytes as typed.
        subscriber.subscribe(os.fsencode(args.topic))
        curve = curve_keys is not None
        publisher = Connection(subscriber, monitor, args.connect, MAX_MESSAGE_BYTES, curve)
        topic = printable(args.topic)
        print(f"Waiting for {args.count} messages starting with '{topic}' from {args.connect}.")

        for _ in range(args.count):
            if not wait_for_message(publisher, args.timeout):
                print(why_nothing_came(publisher, args.timeout, topic), file=sys.stderr)
                return 1
            frames = subscriber.recv_multipart(copy=False)
            print(message_text(frames))
        return 0


def set_subscriber_limits(subscriber: zmq.Socket[bytes]) -> None:
    """Bound what a publisher, or anyone in its place, can make this subscriber hold."""
    # All a SUB socket queues is its subscription: nothing worth waiting for at exit.
    subscriber.setsockopt(zmq.LINGER, 0)
    subscriber.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    drop_vanished_peers(subscriber)


def message_text(frames: list[zmq.Frame]) -> str:
    """The message on one line: the start of its first frames, with what is not UTF-8 or not
    printable escaped. Only what is shown is decoded: a message may be megabytes long."""
    shown = [
        bytes(frame.buffer[: SHOWN_CHARACTERS + 1]).decode("utf-8", errors="backslashreplace")
        for frame in frames[:3]
    ]
    text = " ".join(shown) + (" ..." if len(frames) > 3 else "")
    return printable(text, SHOWN_CHARACTERS)


def wait_for_message(publisher: Connection, timeout: float | None) -> bool:
    """True once a message is there, False after `timeout` seconds (None: wait for ever)."""
    # 0.1 s slices, not one blocking call: Ctrl-C is acted on only when such a call returns.
    deadline = None if timeout is None else time.monotonic() + timeout
    while not publisher.socket.poll(100):
        publisher.update()
        if deadline is not None and time.monotonic() >= deadline:
            return False
    return True


def why_nothing_came(publisher: Connection, timeout: float, topic: str) -> str:
    waited = f"No message from {publisher.endpoint} within {timeout:g} s"
    if not publisher.ever_connected and publisher.curve and publisher.handshakes_failed:
        return (
            f"{waited}: it cut off every CURVE handshake. Is --curve-server its public key "
            "file, and does it use CURVE?"
        )
    if not publisher.ever_connected and publisher.handshakes_failed:
        return (
            f"{waited}: it cut off every handshake. If it uses CURVE, pass --curve-server with "
            "its public key file."
        )
    if not publisher.ever_connected:
        return f"{waited}. Is the publisher running? Start it with: uv run server_broadcast.py"
    if not publisher.connected:
        return f"{waited}: the publisher went away and has not come back."
    return f"{waited}: the publisher is up, but sent nothing starting with '{topic}'."


class Connection:
    """A connecting socket's link to its peer, as the socket monitor reports it."""

    # libzmq never retries a connection it dropped for a protocol error, such as a frame too big.
    EVENTS = (
        zmq.EVENT_HANDSHAKE_SUCCEEDED
        | zmq.EVENT_DISCONNECTED
        | zmq.EVENT_CONNECT_RETRIED
        | HANDSHAKE_FAILED
    )
    GIVEN_UP_AFTER_SECONDS = 0.5
    HINT_AFTER_SECONDS = 2.0

    def __init__(
        self,
        socket: zmq.Socket[bytes],
        monitor: zmq.Socket[bytes],
        endpoint: str,
        limit: int,
        curve: bool,
    ) -> None:
        self.socket = socket
        self.monitor = monitor
        self.endpoint = endpoint
        self.limit = limit
        self.curve = curve
        self.connected = self.ever_connected = False
        self.handshakes_failed = 0
        self.failing_since: float | None = None
        self.lost_at: float | None = None

    def update(self) -> None:
        """Take the monitor's news, raise Refused if the server will never let us in, and
        connect again if libzmq has given up."""
        while self.monitor.poll(0):
            event, value = recv_event(self.monitor)
            if event & HANDSHAKE_FAILED:
                check_not_refused(event, value, self.endpoint, self.curve)
                self.handshake_failed()
                continue
            self.connected = event == zmq.EVENT_HANDSHAKE_SUCCEEDED
            self.ever_connected |= self.connected
            self.lost_at = time.monotonic() if event == zmq.EVENT_DISCONNECTED else None
        if self.lost_at and time.monotonic() - self.lost_at > self.GIVEN_UP_AFTER_SECONDS:
            print(
                f"Dropped {self.endpoint} for breaking the protocol (a message over "
                f"{self.limit:,} bytes, or the wrong kind of socket): connecting again.",
                file=sys.stderr,
            )
            self.socket.disconnect(self.endpoint)
            self.socket.connect(self.endpoint)
            self.lost_at = None

    def handshake_failed(self) -> None:
        """Count a handshake cut off with no reason given; after a while, say what may be wrong."""
        self.handshakes_failed += 1
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        # Not at once: a server whose security differs may hang up before it can say so.
        elif time.monotonic() - self.failing_since >= self.HINT_AFTER_SECONDS:
            cut_off = (
                f"{self.endpoint} has cut off every handshake for {self.HINT_AFTER_SECONDS:g} s"
            )
            if self.curve:
                print(
                    f"{cut_off}: is --curve-server the server's public key file, and does the "
                    "server use CURVE? Trying again.",
                    file=sys.stderr,
                )
            else:
                print(
                    f"{cut_off}: if it uses CURVE, pass --curve-server with its public key file. "
                    "Trying again.",
                    file=sys.stderr,
                )
            self.failing_since = math.inf


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


def printable(text: str, limit: int = 80) -> str:
    """`text` on one line, cut to `limit` characters, with control characters escaped."""
    shown = "".join(
        character if character.isprintable() else character.encode("unicode_escape").decode()
        for character in text[:limit]
    )
    return shown + "..." if len(text) > limit else shown


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


def at_least_one(text: str) -> int:
    """argparse type: a whole number, 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is less than 1")
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
        description="Publish-subscribe subscriber: print the messages that start with a topic."
    )
    parser.add_argument(
        "--connect",
        default=DEFAULT_ENDPOINT,
        type=endpoint,
        metavar="ENDPOINT",
        help=f"publisher endpoint, tcp:// or ipc:// (default: {DEFAULT_ENDPOINT})",
    )
    parser.add_argument(
        "--topic",
        default="TIME",
        help="receive only messages that start with this prefix; '' receives all (default: TIME)",
    )
    parser.add_argument(
        "--count",
        type=at_least_one,
        default=5,
        metavar="N",
        help="messages to print (default: 5)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="give up if no message arrives for this long (default: wait for ever)",
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
