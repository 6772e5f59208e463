# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Publish-subscribe, the publisher: a PUB socket that broadcasts the time.

It binds tcp://127.0.0.1:5556 and every --interval seconds (5, as in the post) publishes one
message, "TIME" followed by time.asctime(), to every subscriber connected at that moment. Nobody
listening? The message is dropped: that is how PUB works. --count stops it after N messages
(exit code 0); Ctrl-C or SIGTERM stop it with exit code 130.

Run it, then one or more subscribers in other terminals:

    uv run server_broadcast.py
    uv run client_broadcast.py
"""

import argparse
import io
import itertools
import signal
import sys
import time

import zmq

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
# Subscribers send only their subscriptions, which are short.
MAX_SUBSCRIPTION_BYTES = 4096
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
        return publish(args)
    except KeyboardInterrupt:
        print("Interrupted: shutting down.", file=sys.stderr)
        return 130


def publish(args: argparse.Namespace) -> int:
    """The pattern: bind PUB, then send a message every interval to whoever is subscribed."""
    with zmq.Context() as context, context.socket(zmq.PUB) as publisher:
        # At exit, queued messages get half a second to leave: never hang on a slow subscriber.
        publisher.setsockopt(zmq.LINGER, 500)
        # Anyone who can connect can subscribe: libzmq drops a peer whose frame is over the cap.
        publisher.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
        set_listen_backlog_and_keepalive(publisher)
        try:
            publisher.bind(args.bind)
        except (zmq.ZMQError, UnicodeError) as error:
            print(f"Cannot bind: {error}", file=sys.stderr)
            return 1
        print(f"Publishing on {args.bind} every {args.interval:g} s (Ctrl-C to stop).")
        signal.pthread_sigmask(signal.SIG_SETMASK, [])  # Ctrl-C and SIGTERM stop it from here on.

        numbers = itertools.count(1) if args.count is None else range(1, args.count + 1)
        scheduled = time.monotonic()
        for number in numbers:
            if args.interval > 0:
                scheduled = sleep_until_next(scheduled, args.interval)
            message = "TIME" + time.asctime()
            publisher.send_string(message)
            if args.interval > 0:
                print(f"Sent {message}")
            elif number % 100_000 == 0:
                # Flat out, a line per message would swamp the terminal and slow the loop down.
                print(f"Sent {number} messages, the last: {message}")
        if args.interval == 0:
            print(f"Sent {args.count} messages.")
        return 0


def sleep_until_next(scheduled: float, interval: float) -> float:
    """Sleep until `interval` after `scheduled`, and return that moment."""
    # To a schedule, not a fixed pause, so that the rate holds whatever a send costs.
    scheduled += interval
    if scheduled < time.monotonic():
        # After a pause (SIGSTOP, a laptop asleep), start afresh: no burst of missed messages.
        scheduled = time.monotonic() + interval
    time.sleep(max(0.0, scheduled - time.monotonic()))
    return scheduled


def set_listen_backlog_and_keepalive(socket: zmq.Socket[bytes]) -> None:
    """Take a thousand subscribers joining at once, and drop one whose host vanished."""
    # libzmq's backlog of 100 makes the 101st joiner wait a second to try again.
    socket.setsockopt(zmq.BACKLOG, 1024)
    # An idle connection costs a file descriptor until its handshake ends: 3 s, not libzmq's 30.
    socket.setsockopt(zmq.HANDSHAKE_IVL, 3000)
    # TCP keepalive: a peer's kernel answers it even while the peer is busy, so only a host
    # that has gone (unplugged, powered off) is dropped, within about 5 s of going quiet.
    socket.tcp_keepalive, socket.tcp_keepalive_idle = 1, 2  # On, after 2 s of quiet;
    socket.tcp_keepalive_intvl, socket.tcp_keepalive_cnt = 1, 3  # 3 probes, 1 s apart.


def stop(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM: stop once; a second signal cannot break the clean-up."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # Any later one waits, blocked.
    for signum in STOP_SIGNALS:  # One already delivered runs a handler that does nothing.
        signal.signal(signum, lambda *_: None)
    raise KeyboardInterrupt


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Publish-subscribe publisher: broadcast 'TIME' and the current time.",
        epilog="Other machines cannot reach the default endpoint: pass --bind tcp://*:5556 to "
        "listen on every interface (see secure/ before you do so on an untrusted network).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--bind", default=DEFAULT_ENDPOINT, metavar="ENDPOINT",
        help="where to listen: tcp://HOST:PORT, or ipc://PATH",
    )  # fmt: skip
    parser.add_argument(
        "--interval", type=float, default=5.0, metavar="SECONDS",
        help="pause between messages; 0 publishes as fast as it can, and prints a count every "
        "100,000 messages instead of each message",
    )  # fmt: skip
    parser.add_argument("--count", type=int, metavar="N", help="stop after N (None: never stop)")
    args = parser.parse_args()
    if not 0 <= args.interval <= 86_400:
        parser.error(f"--interval must be 0 to 86,400 seconds, not {args.interval}")
    if args.count is not None and args.count < 1:
        parser.error(f"--count must be 1 or more, not {args.count}")
    return args


if __name__ == "__main__":
    sys.exit(main())
