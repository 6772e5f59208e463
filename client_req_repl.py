# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Request-reply, the client: a REQ socket that sends requests and prints the replies.

It connects to tcp://127.0.0.1:5555, sends each MESSAGE in turn ("Hello world 1", as in the post),
waits for each reply, then sends STOP, which ends the server (not with --no-stop). With no reply
within --timeout seconds it says what it saw of the server and exits 1; Ctrl-C or SIGTERM, 130.

Start the server first, in another terminal:

    uv run server_req_repl.py
    uv run client_req_repl.py
"""

import argparse
import io
import os
import signal
import struct
import sys
import time

import zmq

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
# The server takes requests of up to 64 KiB and replies with one byte more.
MAX_REPLY_BYTES = 64 * 1024 + 1
CONNECTION_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
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
        return request_and_print_replies(args)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130


def request_and_print_replies(args: argparse.Namespace) -> int:
    """The pattern: connect REQ, then send each request and wait for its reply."""
    with (
        zmq.Context() as context,
        context.socket(zmq.REQ) as requester,
        requester.get_monitor_socket(CONNECTION_EVENTS | HANDSHAKE_FAILED) as monitor,
    ):
        # Nothing is worth delivering at exit: each request has had its reply or been given up.
        requester.setsockopt(zmq.LINGER, 0)
        # A reply much bigger than any request is not from our server: libzmq drops that peer.
        requester.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
        try:
            requester.connect(args.connect)
        except (zmq.ZMQError, UnicodeError) as error:
            print(f"Cannot connect: {error}", file=sys.stderr)
            return 1
        signal.pthread_sigmask(signal.SIG_SETMASK, [])  # Ctrl-C and SIGTERM stop it from here on.
        server = Server(requester, monitor, args.connect)

        # The bytes exactly as typed, even ones that are not UTF-8; then STOP, to end the server.
        requests = [os.fsencode(message) for message in args.messages]
        for request in requests + [b"STOP"] * (not args.no_stop):
            if server.update().lost:  # Hung up since the last reply: nothing would answer.
                print(server.why_no_reply(args.timeout), file=sys.stderr)
                return 1
            requester.send(request)
            # A finite wait: with no server, REQ would wait for ever.
            if server.replied_within(args.timeout):
                print(f"Received reply {printable(requester.recv_multipart())}")
            elif request == b"STOP" and server.lost:
                # The post's server ends on STOP without a reply: its hang-up says it stopped.
                print("Sent STOP: the server closed the connection.")
            else:
                print(server.why_no_reply(args.timeout), file=sys.stderr)
                return 1
        return 0


class Server:
    """The server as this client sees it: its replies, and what the socket monitor reports."""

    def __init__(self, requester: zmq.Socket[bytes], monitor: zmq.Socket[bytes], endpoint: str):
        self.requester, self.monitor, self.endpoint = requester, monitor, endpoint
        self.ever_connected = self.lost = self.cut_off = False

    def replied_within(self, timeout: float) -> bool:
        """True once a reply is there; False after `timeout` s, or once the connection is lost."""
        deadline = time.monotonic() + timeout
        while not self.requester.poll(100):  # 0.1 s at a time, to read the monitor in between.
            # libzmq connects again by itself, but REQ never sends a lost request again.
            if self.update().lost or time.monotonic() >= deadline:
                return False
        return True

    def update(self) -> "Server":
        """Take in what the monitor has reported since the last look."""
        while self.monitor.poll(0):
            first_frame, _endpoint = self.monitor.recv_multipart()
            # The event is the first 16 bits (zmq.utils.monitor would cost ~35 ms a start).
            event = struct.unpack("=H", first_frame[:2])[0]
            self.cut_off |= bool(event & HANDSHAKE_FAILED)
            if event & CONNECTION_EVENTS:
                self.ever_connected |= event == zmq.EVENT_HANDSHAKE_SUCCEEDED
                self.lost |= event == zmq.EVENT_DISCONNECTED
        return self

    def why_no_reply(self, timeout: float) -> str:
        if not self.ever_connected and self.cut_off:
            return f"No reply from {self.endpoint}: it cut off the handshake (not REP? CURVE?)."
        if self.lost:
            return f"No reply from {self.endpoint}: the connection was lost (server stopped?)."
        waited = f"No reply from {self.endpoint} within {timeout:g} s"
        if not self.ever_connected:
            return f"{waited}. Is the server running? Start it with: uv run server_req_repl.py"
        return f"{waited}: the server is connected but has not answered."


def printable(frames: list[bytes]) -> str:
    """A message on one line: its first three frames as bytes literals, each cut to 200 bytes."""
    shown = " + ".join(repr(frame[:200]) + "..." * (len(frame) > 200) for frame in frames[:3])
    return shown + f" + {len(frames) - 3} more frames" * (len(frames) > 3)


def stop(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM: stop once; a second signal cannot break the clean-up."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # Any later one waits, blocked.
    for signum in STOP_SIGNALS:  # One already delivered runs a handler that does nothing.
        signal.signal(signum, lambda *_: None)
    raise KeyboardInterrupt


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Request-reply client: send requests, print the replies, then send STOP.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "messages", nargs="*", default=["Hello world 1"], metavar="MESSAGE",
        help="requests to send, one at a time",
    )  # fmt: skip
    parser.add_argument(
        "--connect", default=DEFAULT_ENDPOINT, metavar="ENDPOINT",
        help="the server: tcp://HOST:PORT, or ipc://PATH",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS",
        help="how long to wait for each reply before giving up",
    )  # fmt: skip
    parser.add_argument("--no-stop", action="store_true", help="do not send STOP at the end")
    args = parser.parse_args()
    if not args.timeout > 0:
        parser.error(f"--timeout must be a number of seconds above 0, not {args.timeout}")
    return args


if __name__ == "__main__":
    sys.exit(main())
