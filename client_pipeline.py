# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Pipeline (push-pull), a worker: pull tasks, do the work, push each result to the sink.

It connects a PULL socket to tcp://127.0.0.1:5557 for tasks and a PUSH socket to
tcp://127.0.0.1:5558 for results. Each task is a pickled (name, workload) tuple; the worker
sleeps for `workload` milliseconds to simulate the work, then sends (its own name, the task's
name, workload) to the sink. It runs until Ctrl-C or SIGTERM (exit code 130), may start before the
ventilator, and connects again whenever it loses the ventilator. With --curve-server it encrypts
both connections with CURVE and works only for the server whose public key it holds.

Start the ventilator, then three workers, each in its own terminal:

    uv run server_pipeline.py
    uv run client_pipeline.py
"""

from __future__ import annotations

import argparse
import io
import math
import os
import pickle
import pickletools
import platform
import signal
import struct
import sys
import time

import zmq
from zmq.utils import z85

DEFAULT_TASKS_ENDPOINT = "tcp://127.0.0.1:5557"
DEFAULT_RESULTS_ENDPOINT = "tcp://127.0.0.1:5558"
MAX_MESSAGE_BYTES = 4096
MAX_WORKLOAD_MS = 10_000
MAX_NAME_CHARACTERS = 200
MAX_KEY_FILE_BYTES = 64 * 1024
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
# Every opcode that pickles a tuple of strings and small integers, at protocols 2 to 5.
PLAIN_DATA_OPCODES = frozenset(
    {
        "PROTO", "FRAME", "STOP", "MARK", "TUPLE", "TUPLE2", "TUPLE3",
        "SHORT_BINUNICODE", "BINUNICODE", "BININT", "BININT1", "BININT2",
        "MEMOIZE", "BINPUT", "BINGET",
    }
)  # fmt: skip


def main() -> int:
    args = parse_arguments()
    print_lines_as_they_come()
    stop_on_first_signal()
    try:
        return work(args, client_keys(args))
    except KeyFileError as error:
        print(error, file=sys.stderr)
        return 1
    except Refused as refusal:
        print(refusal, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return interrupted("Interrupted: shutting down.")
    except BrokenPipeError:
        return output_closed()


def work(args: argparse.Namespace, curve_keys: tuple[bytes, bytes, bytes] | None) -> int:
    """The pattern: connect PULL to the ventilator and PUSH to the sink, then work for ever."""
    with (
        zmq.Context() as context,
        context.socket(zmq.PULL) as receiver,
        context.socket(zmq.PUSH) as sender,
        receiver.get_monitor_socket(Connection.EVENTS) as receiver_monitor,
        sender.get_monitor_socket(Connection.EVENTS) as sender_monitor,
    ):
        set_worker_limits(receiver, sender)
        become_curve_client(receiver, curve_keys)
        become_curve_client(sender, curve_keys)
        for socket, endpoint in ((receiver, args.connect), (sender, args.results)):
            try:
                socket.connect(endpoint)
            except zmq.ZMQError as error:
                print(f"Cannot connect: {error}", file=sys.stderr)
                return 1
        print(
            f"Worker {printable(args.name)}: tasks from {args.connect}, results to {args.results}."
        )
        print("Waiting for tasks (Ctrl-C to stop).")

        curve = curve_keys is not None
        ventilator = Connection(receiver, receiver_monitor, args.connect, MAX_MESSAGE_BYTES, curve)
        sink = Connection(sender, sender_monitor, args.results, MAX_MESSAGE_BYTES, curve)
        while True:
            # 0.1 s slices: Ctrl-C is seen at once, and the monitors are read.
            if not receiver.poll(100):
                ventilator.update()
                sink.update()
                continue
            try:
                sender_name, workload_ms = load_task(receiver.recv_multipart())
            except ValueError as error:
                print(f"Ignored a task: {printable(str(error), 300)}", file=sys.stderr)
                continue
            print(f"Task from {printable(sender_name)}: {workload_ms} ms")
            sleep(workload_ms / 1000)
            send_when_there_is_room(sink, pickle.dumps((args.name, sender_name, workload_ms)))


def set_worker_limits(receiver: zmq.Socket[bytes], sender: zmq.Socket[bytes]) -> None:
    """Bound what the ventilator and the sink, or anyone in their place, can make us hold."""
    # Tasks are tiny: a bigger frame is not from our ventilator, and libzmq drops that peer.
    receiver.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    receiver.setsockopt(zmq.LINGER, 0)
    # At exit, queued results get half a second to reach the sink: a dead one must not hold us.
    sender.setsockopt(zmq.LINGER, 500)
    # The sink sends nothing to a PUSH socket, but libzmq would keep whatever a peer sent.
    sender.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    drop_vanished_peers(receiver)
    drop_vanished_peers(sender)


def send_when_there_is_room(sink: Connection, message: bytes) -> None:
    """Send, waiting while the sink is away and 1,000 results already wait for it."""
    while True:
        try:
            sink.socket.send(message, zmq.NOBLOCK)
            return
        except zmq.Again:
            # Wait in 0.1 s slices, so that Ctrl-C is seen at once.
            sink.socket.poll(100, zmq.POLLOUT)
            sink.update()


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


def load_task(frames: list[bytes]) -> tuple[str, int]:
    """(sender name, workload in ms) from a task message, or raise ValueError."""
    if len(frames) != 1:
        raise ValueError(f"expected 1 frame, got {len(frames)}")
    value = load_plain_pickle(frames[0])
    if not (isinstance(value, tuple) and len(value) == 2):
        raise ValueError(f"expected (name, workload), got {describe(value)}")
    sender_name, workload_ms = value
    check_name(sender_name)
    check_workload(workload_ms)
    return sender_name, workload_ms


def load_plain_pickle(data: bytes) -> object:
    """Unpickle tuples, strings and small integers; refuse every other opcode before loading."""
    # Others call functions (os.system), build objects, or allocate gigabytes (LONG_BINPUT).
    try:
        opcodes = list(pickletools.genops(data))
    except ValueError as error:
        raise ValueError(f"not a pickle: {error}") from None
    for opcode, argument, position in opcodes:
        if opcode.name not in PLAIN_DATA_OPCODES:
            raise ValueError(f"refused pickle opcode {opcode.name}: only plain data is loaded")
        if opcode.name == "FRAME" and isinstance(argument, int) and argument > len(data):
            raise ValueError("not a pickle: a frame longer than the message")
        if opcode.name == "STOP" and position != len(data) - 1:
            raise ValueError("not a pickle: bytes after its end")
    try:
        return pickle.loads(data)
    except Exception as error:
        raise ValueError(f"not a pickle: {error}") from None


def check_name(name: object) -> None:
    if not isinstance(name, str):
        raise ValueError(f"expected a name, got {describe(name)}")
    if len(name) > MAX_NAME_CHARACTERS:
        raise ValueError(f"a name of {len(name)} characters: at most {MAX_NAME_CHARACTERS}")


def check_workload(workload_ms: object) -> None:
    if type(workload_ms) is not int:
        raise ValueError(f"expected a workload in ms, got {describe(workload_ms)}")
    if not 0 <= workload_ms <= MAX_WORKLOAD_MS:
        raise ValueError(f"workload {workload_ms} ms is outside 0 to {MAX_WORKLOAD_MS} ms")


def describe(value: object) -> str:
    """What `value` is, in a few words, without formatting all of it (repr can take minutes)."""
    if isinstance(value, tuple):
        kinds = ", ".join(type(item).__name__ for item in value[:4])
        return f"a tuple of {len(value)} ({kinds}{', ...' if len(value) > 4 else ''})"
    kind = type(value).__name__
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


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


def sleep(seconds: float) -> None:
    """time.sleep in 0.1 s slices: a Ctrl-C that lands just before a long sleep begins would
    otherwise be acted on only when the whole sleep is over."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(remaining, 0.1))


def endpoint(text: str) -> str:
    """argparse type: an endpoint that libzmq can take (pyzmq passes it on as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{text!r} holds bytes that are not UTF-8") from None
    return text


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Pipeline worker: pull tasks, simulate the work, push results to the sink."
    )
    parser.add_argument(
        "name",
        nargs="?",
        default=f"{platform.node()}-{os.getpid()}",
        help="name sent with every result (default: HOST-PID)",
    )
    parser.add_argument(
        "--connect",
        default=DEFAULT_TASKS_ENDPOINT,
        type=endpoint,
        metavar="ENDPOINT",
        help=f"ventilator endpoint to pull tasks from (default: {DEFAULT_TASKS_ENDPOINT})",
    )
    parser.add_argument(
        "--results",
        default=DEFAULT_RESULTS_ENDPOINT,
        type=endpoint,
        metavar="ENDPOINT",
        help=f"sink endpoint to push results to (default: {DEFAULT_RESULTS_ENDPOINT})",
    )
    add_curve_client_arguments(parser)
    args = parser.parse_args()
    if args.curve_secret is not None and args.curve_server is None:
        parser.error("--curve-secret needs --curve-server")
    if len(args.name) > MAX_NAME_CHARACTERS:
        parser.error(f"NAME is {len(args.name)} characters long: at most {MAX_NAME_CHARACTERS}")
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
