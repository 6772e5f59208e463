# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Like ../client_pipeline.py, plus CURVE: encrypted, and only with the server whose key it holds.

It connects PULL to tcp://127.0.0.1:5557 for tasks and PUSH to tcp://127.0.0.1:5558 for results.
A task is a pickled (name, workload, task id): the worker sleeps `workload` ms, as if it worked,
then sends (its name, the task's name, workload, task id) to the sink; the post's (name,
workload) tasks it answers without an id. It skips the tasks still queued from a ventilator that
has gone, and runs until Ctrl-C or SIGTERM (exit code 130).

Make the keys (secure/README.md), start the ventilator, then three workers, in their terminals:

    uv run secure/server_pipeline.py --curve-clients keys/clients
    uv run secure/client_pipeline.py --curve-secret keys/client.key_secret
"""

import argparse
import io
import os
import pickle
import pickletools
import platform
import signal
import struct
import sys
import time

import zmq
import zmq.auth
import zmq.utils.z85

DEFAULT_TASKS_ENDPOINT = "tcp://127.0.0.1:5557"
DEFAULT_RESULTS_ENDPOINT = "tcp://127.0.0.1:5558"
PLAIN_DATA_OPCODES = {
    "PROTO", "FRAME", "STOP", "MARK", "TUPLE", "TUPLE2", "TUPLE3", "BINPUT", "BINGET", "MEMOIZE",
    "SHORT_BINUNICODE", "BINUNICODE", "BININT", "BININT1", "BININT2"}  # fmt: skip
LINK_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def main() -> int:
    args = parse_arguments()
    if isinstance(sys.stdout, io.TextIOWrapper):  # Each line at once, even into a pipe (| tee).
        sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")
    # Ended quietly by SIGPIPE, as command-line tools are, once our reader has gone (| head).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # Held back until the sockets are connected: an interrupted set-up could leave term() waiting.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        return work(args)
    except KeyboardInterrupt:
        print("Interrupted: shutting down.", file=sys.stderr)
        return 130
    except (zmq.ZMQError, UnicodeError) as error:
        print(f"Cannot connect: {error}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as error:
        print(f"Cannot use the keys: {error}", file=sys.stderr)
        return 1


def work(args: argparse.Namespace) -> int:
    """The pattern: connect PULL to the ventilator and PUSH to the sink, then work for ever."""
    with (
        zmq.Context() as context,
        context.socket(zmq.PULL) as receiver,
        context.socket(zmq.PUSH) as sender,
        receiver.get_monitor_socket(LINK_EVENTS) as receiver_monitor,
        sender.get_monitor_socket(LINK_EVENTS) as sender_monitor,
    ):
        server_key = load_key(args.curve_server)
        public_key, secret_key = our_key_pair(args.curve_secret)
        for socket in (receiver, sender):
            # CURVE: encrypted, and only with the server that holds the secret half of its key.
            socket.curve_serverkey = server_key
            socket.curve_publickey, socket.curve_secretkey = public_key, secret_key
            socket.setsockopt(zmq.MAXMSGSIZE, 4096)  # Ours are tiny: drop a peer sending more.
            # TCP keepalive drops a peer whose host vanished without a goodbye, within about 5 s.
            socket.tcp_keepalive, socket.tcp_keepalive_idle = 1, 2  # On, after 2 s of quiet;
            socket.tcp_keepalive_intvl, socket.tcp_keepalive_cnt = 1, 3  # 3 probes, 1 s apart.
        # At exit, queued results get half a second to reach the sink: a dead one must not hold us.
        sender.setsockopt(zmq.LINGER, 500)
        receiver.connect(args.connect)  # A malformed endpoint raises: main() says so in a line.
        sender.connect(args.results)
        print(f"Worker {args.name} waits for tasks from {args.connect} (Ctrl-C to stop).")
        signal.pthread_sigmask(signal.SIG_SETMASK, [])  # Ctrl-C and SIGTERM stop it from here on.
        ventilator = Connection(receiver, receiver_monitor, args.connect)
        sink = Connection(sender, sender_monitor, args.results)
        ventilator.our_key = sink.our_key = public_key.decode()

        while True:
            if not receiver.poll(100):  # 0.1 s at a time, to read the monitors in between.
                ventilator.update()
                continue
            try:
                run_name, workload_ms, task_id = load_task(receiver.recv_multipart())
            except ValueError as error:
                print(f"Ignored a task: {error}", file=sys.stderr)
                continue
            if task_id is not None and not ventilator.update():
                # Queued here when our ventilator, and so its sink, went away: that run is over.
                print(f"Skipped task {task_id} of {run_name!r}: its ventilator has gone.")
                continue
            print(f"Task from {run_name!r}: {workload_ms} ms")  # repr escapes terminal codes.
            time.sleep(workload_ms / 1000)
            result = (args.name, run_name, workload_ms, task_id)[: 3 if task_id is None else 4]
            sink.send(pickle.dumps(result))


class Connection:
    """A connecting socket's link to its peer, as the socket monitor reports it."""

    def __init__(self, socket: zmq.Socket[bytes], monitor: zmq.Socket[bytes], endpoint: str):
        self.socket, self.monitor, self.endpoint = socket, monitor, endpoint
        self.connected, self.lost_at, self.our_key, self.cut_off = False, 0.0, "", False

    def update(self) -> bool:
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
            self.cut_off |= event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            self.connected = event == zmq.EVENT_HANDSHAKE_SUCCEEDED
            # libzmq says when it will try again; after a protocol error it never does.
            self.lost_at = time.monotonic() if event == zmq.EVENT_DISCONNECTED else 0.0
        if self.lost_at and time.monotonic() - self.lost_at > 0.5:
            print(f"Dropped {self.endpoint} for breaking the protocol.", file=sys.stderr)
            self.socket.disconnect(self.endpoint)
            self.socket.connect(self.endpoint)
            self.lost_at = 0.0
        return self.connected

    def send(self, message: bytes) -> None:
        while not self.socket.poll(100, zmq.POLLOUT):  # Blocked in send, it could not update().
            self.update()
        self.socket.send(message)


def load_task(frames: list[bytes]) -> tuple[str, int, "int | None"]:
    """(run name, workload in ms, task id or None) from a task message, or raise ValueError."""
    data = frames[0] if len(frames) == 1 else b""
    # Tuples, strings and small integers only: other opcodes run code, or allocate gigabytes.
    try:
        opcodes = {opcode.name for opcode, _argument, _position in pickletools.genops(data)}
        task = pickle.loads(data) if opcodes <= PLAIN_DATA_OPCODES else None
    except Exception:
        raise ValueError("not one frame of pickle") from None
    if isinstance(task, tuple) and len(task) == 2:
        task += (None,)  # The post's tasks have no id.
    kinds = [type(value) for value in task] if isinstance(task, tuple) else []
    if not isinstance(task, tuple) or kinds not in ([str, int, int], [str, int, type(None)]):
        raise ValueError("expected a pickled (name, workload, task id) of plain data")
    if not 0 <= task[1] <= 10_000:
        raise ValueError("expected a workload of 0 to 10,000 ms")
    return task


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
        description="Pipeline worker: pull tasks, simulate the work, push results to the sink.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    host_and_pid = f"{platform.node()}-{os.getpid()}"
    parser.add_argument("name", nargs="?", default=host_and_pid, help="sent with every result")
    parser.add_argument("--connect", default=DEFAULT_TASKS_ENDPOINT, help="the ventilator's tasks")
    parser.add_argument("--results", default=DEFAULT_RESULTS_ENDPOINT, help="the sink's results")
    parser.add_argument("--curve-server", default="keys/server.key", metavar="FILE")
    parser.add_argument("--curve-secret", metavar="FILE", help="ours; None: made for this run")
    args = parser.parse_args()
    if len(args.name) > 200:  # The sink refuses longer ones.
        parser.error(f"NAME is {len(args.name)} characters long: at most 200")
    return args


if __name__ == "__main__":
    sys.exit(main())
