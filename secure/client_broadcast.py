# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Like ../client_broadcast.py, plus CURVE: encrypted, and only from the server whose key it holds.

It connects to tcp://127.0.0.1:5556, subscribes to the messages that start with TIME, prints the
next 5 (--count) and exits 0. What was published before it connected is not replayed: it sees
only what is sent while it listens. A wait past --timeout exits 1; Ctrl-C or SIGTERM, 130.

Make the keys (secure/README.md), then start the publisher and this subscriber, in either order:

    uv run secure/server_broadcast.py --curve-clients keys/clients
    uv run secure/client_broadcast.py --curve-secret keys/client.key_secret
"""

import argparse
import io
import os
import signal
import struct
import sys
import time

import zmq
import zmq.auth
import zmq.utils.z85

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
# The publisher's messages are about 30 bytes: a frame far bigger is not from it.
MAX_MESSAGE_BYTES = 16 * 1024
MAX_TOPIC_BYTES = 4000  # Our publisher drops a subscriber whose subscription is over 4 KiB.
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def main() -> int:
    args = parse_arguments()
    if isinstance(sys.stdout, io.TextIOWrapper):  # Each line at once, even into a pipe (| tee).
        sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")
    # Ended quietly by SIGPIPE, as command-line tools are, once our reader has gone (| head).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # Held back until the socket is connected: an interrupted set-up could leave term() waiting.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        return print_messages(args)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except (OSError, ValueError) as error:
        print(f"Cannot use the keys: {error}", file=sys.stderr)
        return 1


def print_messages(args: argparse.Namespace) -> int:
    """The pattern: connect SUB, subscribe to a topic, then print each message that comes."""
    with (
        zmq.Context() as context,
        context.socket(zmq.SUB) as subscriber,
        subscriber.get_monitor_socket(Connection.EVENTS | HANDSHAKE_FAILED) as monitor,
    ):
        # All a SUB socket has to send is its subscription: nothing worth waiting for at exit.
        subscriber.setsockopt(zmq.LINGER, 0)
        subscriber.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        # CURVE: encrypted, and only with the server that holds the secret half of its key.
        subscriber.curve_serverkey = load_key(args.curve_server)
        public_key, subscriber.curve_secretkey = our_key_pair(args.curve_secret)
        subscriber.curve_publickey = public_key
        # TCP keepalive drops a publisher whose host vanished within 5 s, to connect again.
        subscriber.tcp_keepalive, subscriber.tcp_keepalive_idle = 1, 2  # On, after 2 s of quiet;
        subscriber.tcp_keepalive_intvl, subscriber.tcp_keepalive_cnt = 1, 3  # 3 probes, 1 s apart.
        try:
            subscriber.connect(args.connect)
        except (zmq.ZMQError, UnicodeError) as error:
            print(f"Cannot connect: {error}", file=sys.stderr)
            return 1
        # Without a subscription a SUB socket receives nothing at all. The bytes as typed.
        subscriber.subscribe(os.fsencode(args.topic))
        signal.pthread_sigmask(signal.SIG_SETMASK, [])  # Ctrl-C and SIGTERM stop it from here on.
        publisher = Connection(subscriber, monitor, args.connect)
        publisher.our_key = public_key.decode()
        print(
            f"Waiting for {args.count} messages starting with {args.topic!r} from {args.connect}."
        )

        for _ in range(args.count):
            deadline = time.monotonic() + (args.timeout or float("inf"))
            while not subscriber.poll(100):  # 0.1 s at a time, to read the monitor in between.
                publisher.update()
                if time.monotonic() >= deadline:
                    print(publisher.why_nothing_came(args.timeout, args.topic), file=sys.stderr)
                    return 1
            print(message_text(subscriber.recv_multipart(copy=False)))
        return 0


class Connection:
    """A connecting socket's link to its peer, as the socket monitor reports it."""

    EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED

    def __init__(self, socket: zmq.Socket[bytes], monitor: zmq.Socket[bytes], endpoint: str):
        self.socket, self.monitor, self.endpoint = socket, monitor, endpoint
        self.connected = self.ever_connected = self.cut_off = False
        self.our_key = ""
        self.lost_at = 0.0

    def update(self) -> None:
        while self.monitor.poll(0):
            first_frame, _endpoint = self.monitor.recv_multipart()
            # The event is the first 16 bits (zmq.utils.monitor would cost ~35 ms a start).
            event = struct.unpack("=H", first_frame[:2])[0]
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # libzmq will not try again.
                raise SystemExit(f"The server at {self.endpoint} refused our key {self.our_key}.")
            if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and not self.cut_off:
                print(
                    f"{self.endpoint} refused the handshake: wrong key? no CURVE?", file=sys.stderr
                )
            self.cut_off |= bool(event & HANDSHAKE_FAILED)
            self.connected = event == zmq.EVENT_HANDSHAKE_SUCCEEDED
            self.ever_connected |= self.connected
            # libzmq says when it will try again; after a protocol error it never does.
            self.lost_at = time.monotonic() if event == zmq.EVENT_DISCONNECTED else 0.0
        if self.lost_at and time.monotonic() - self.lost_at > 0.5:
            print(
                f"Dropped {self.endpoint} for breaking the protocol: connecting again.",
                file=sys.stderr,
            )
            self.socket.disconnect(self.endpoint)
            self.socket.connect(self.endpoint)
            self.lost_at = 0.0

    def why_nothing_came(self, timeout: float, topic: str) -> str:
        waited = f"No message from {self.endpoint} within {timeout:g} s"
        if not self.ever_connected and self.cut_off:
            return f"{waited}: it cut off every handshake (a wrong key? no CURVE?)."
        if not self.ever_connected:
            return f"{waited}. Is the publisher running? Start it with: uv run server_broadcast.py"
        if not self.connected:
            return f"{waited}: the publisher went away and has not come back."
        return f"{waited}: the publisher is up, but sent nothing starting with {topic!r}."


def message_text(frames: list[zmq.Frame]) -> str:
    """The message on one line, cut to 300 characters, with what is not UTF-8 or not printable
    escaped. Only that much is copied: a message may be megabytes long, in thousands of frames."""
    parts = [bytes(frame.buffer[:301]) for frame in frames[:3]]
    text = b" ".join(parts).decode("utf-8", errors="backslashreplace") + " ..." * (len(frames) > 3)
    shown = "".join(
        character if character.isprintable() else character.encode("unicode_escape").decode()
        for character in text[:300]
    )
    return shown + "..." * (len(text) > 300)


def load_key(path: str, secret: bool = False) -> bytes:
    """The key in NAME.key, or with secret=True in NAME.key_secret (zmq.auth's key files)."""
    try:
        key = zmq.auth.load_certificate(path)[1 if secret else 0] or b""
    except IndexError:  # pyzmq's way of saying that a key line has no "=".
        key = b""
    if len(key) != 40 or not set(key) <= set(zmq.utils.z85.Z85CHARS):
        raise ValueError(f"{path} holds no {'secret' if secret else 'public'} key")
    return key


def our_key_pair(path: "str | None") -> tuple[bytes, bytes]:
    """(public, secret): from NAME.key_secret, for the server's allow-list, or made for this run."""
    if path is None:
        return zmq.curve_keypair()
    secret_key = load_key(path, secret=True)
    return zmq.curve_public(secret_key), secret_key


def stop(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM: stop once; a second signal cannot break the clean-up."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # Any later one waits, blocked.
    for signum in STOP_SIGNALS:  # One already delivered runs a handler that does nothing.
        signal.signal(signum, lambda *_: None)
    raise KeyboardInterrupt


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Publish-subscribe subscriber: print the messages that start with a topic.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--connect", default=DEFAULT_ENDPOINT, metavar="ENDPOINT",
        help="the publisher: tcp://HOST:PORT, or ipc://PATH",
    )  # fmt: skip
    parser.add_argument("--topic", default="TIME", help="the messages' start; '' for all of them")
    parser.add_argument("--count", type=int, default=5, metavar="N", help="print N messages")
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS",
        help="give up after this long without a message (None: wait for ever)",
    )  # fmt: skip
    parser.add_argument("--curve-server", default="keys/server.key", metavar="FILE")
    parser.add_argument("--curve-secret", metavar="FILE", help="ours; None: made for this run")
    args = parser.parse_args()
    if args.count < 1:
        parser.error(f"--count must be 1 or more, not {args.count}")
    if args.timeout is not None and not args.timeout > 0:
        parser.error(f"--timeout must be a number of seconds above 0, not {args.timeout}")
    if len(os.fsencode(args.topic)) > MAX_TOPIC_BYTES:
        parser.error(f"--topic is longer than {MAX_TOPIC_BYTES:,} bytes")
    return args


if __name__ == "__main__":
    sys.exit(main())
