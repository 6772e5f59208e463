# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Like ../server_pipeline.py, plus retries: when results stop coming for --timeout seconds, it
sends the missing tasks again, up to --retries rounds, and counts each task's result once.
Only for tasks that are safe to do twice.

It binds a PUSH socket on tcp://127.0.0.1:5557 for tasks and a PULL socket on
tcp://127.0.0.1:5558 for results. It waits until --workers workers (3) have connected, then sends
--tasks tasks (100), each a pickled (NAME, workload, task id) tuple: 1 to 100 milliseconds of
simulated work, and a number that the worker sends back with the result. PUSH deals the tasks
round-robin to the workers connected at that moment. Once every result is back it prints a
summary and exits 0; if results stop coming for --timeout seconds it says how many are missing
and exits 1. Ctrl-C or SIGTERM stop it with exit code 130.

Start it, then three workers, each in its own terminal:

    uv run reliable/server_pipeline.py
    uv run client_pipeline.py
"""

import argparse
import io
import pickle
import pickletools
import random
import secrets
import signal
import struct
import sys
import time
from collections import Counter

import zmq

DEFAULT_TASKS_ENDPOINT = "tcp://127.0.0.1:5557"
DEFAULT_RESULTS_ENDPOINT = "tcp://127.0.0.1:5558"
MAX_MESSAGE_BYTES = 4096
MAX_NAME_CHARACTERS = 200
MAX_TASKS = 1_000_000
# Workers started before the ventilator retry every 0.1 s: wait this long after the last joins.
JOIN_QUIET_SECONDS = 0.2
WORKER_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
PLAIN_DATA_OPCODES = {
    "PROTO", "FRAME", "STOP", "MARK", "TUPLE", "TUPLE2", "TUPLE3", "SHORT_BINUNICODE",
    "BINUNICODE", "BININT", "BININT1", "BININT2", "MEMOIZE", "BINPUT", "BINGET",
}  # fmt: skip
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def main() -> int:
    args = parse_arguments()
    if isinstance(sys.stdout, io.TextIOWrapper):  # Each line at once, even into a pipe (| tee).
        sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")
    # Ended quietly by SIGPIPE, as command-line tools are, once our reader has gone (| head).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # Held back until the sockets are bound: an interrupted set-up could leave term() waiting.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        return ventilate_and_collect(args)
    except KeyboardInterrupt:
        print("Interrupted: shutting down.", file=sys.stderr)
        return 130


def ventilate_and_collect(args: argparse.Namespace) -> int:
    """The pattern: bind PUSH and PULL, wait for the workers, then send tasks and take results."""
    with (
        zmq.Context() as context,
        context.socket(zmq.PUSH) as ventilator,
        context.socket(zmq.PULL) as sink,
        # PUSH deals tasks only to the workers it has when it sends: count them from the start.
        ventilator.get_monitor_socket(WORKER_EVENTS) as monitor,
    ):
        for socket in (ventilator, sink):
            # A ZAP domain makes libzmq refuse ZMTP 1.0 and 2.0 peers: PUSH would deal them tasks.
            socket.setsockopt_string(zmq.ZAP_DOMAIN, "pipeline")
            # Unsent tasks and unread results are worthless once the run is over or given up.
            socket.setsockopt(zmq.LINGER, 0)
            # libzmq drops a peer whose frame is over the cap, even on PUSH, where peers send none.
            socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            set_listen_backlog_and_keepalive(socket)
        try:
            ventilator.bind(args.bind)
            sink.bind(args.results)
        except (zmq.ZMQError, UnicodeError) as error:
            print(f"Cannot bind: {error}", file=sys.stderr)
            return 1
        print(f"Ventilator on {args.bind}, sink on {args.results} (Ctrl-C to stop).")
        signal.pthread_sigmask(signal.SIG_SETMASK, [])  # Ctrl-C and SIGTERM stop it from here on.
        workers = Workers(monitor)
        workers.wait_for(args.workers)

        run = Run(args.name, args.tasks)
        poller = zmq.Poller()
        poller.register(sink, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        while run.unanswered():
            # Offer tasks only while some are unsent, and only when a worker's queue has room:
            # a blocking send would stop the sink from reading, and both would wait for ever.
            poller.register(ventilator, zmq.POLLOUT if run.unsent else 0)
            ready = dict(poller.poll(100))
            if ventilator in ready:
                send_while_there_is_room(ventilator, run)
            if sink in ready:
                run.take(sink.recv_multipart())
            if monitor in ready:
                workers.update()
            if time.monotonic() - run.last_result > args.timeout:
                missing = f"No result for {args.timeout:g} s: {run.unanswered()} of {args.tasks}"
                if run.rounds == args.retries:
                    print(f"{missing} results missing.", file=sys.stderr)
                    return 1
                run.send_missing_again()
                again = f"sending them again (round {run.rounds} of {args.retries})"
                print(f"{missing} results missing: {again}.", file=sys.stderr)
        run.print_summary()
        return 0


def send_while_there_is_room(ventilator: zmq.Socket[bytes], run: "Run") -> None:
    """Send unsent tasks until every worker's queue is full or none are left."""
    while run.unsent:
        task_id = run.unsent[-1]
        if task_id in run.answered:  # Its result came while it waited to be sent again.
            run.unsent.pop()
            continue
        task = (run.name, run.workloads[task_id], task_id)
        try:
            ventilator.send(pickle.dumps(task), zmq.NOBLOCK)
        except zmq.Again:
            return
        run.unsent.pop()
        run.sent_again += run.rounds > 0
        if not run.unsent and not run.rounds:
            print(f"Sent {len(run.workloads)} tasks, {run.total_work_ms} ms of work in all.")


class Workers:
    """How many workers are connected, from the task socket's monitor events."""

    def __init__(self, monitor: zmq.Socket[bytes]) -> None:
        self.monitor = monitor
        self.handshaking: list[int] = []
        self.connected: set[int] = set()

    def wait_for(self, wanted: int) -> None:
        """Return once `wanted` workers are connected and no other has joined for a moment."""
        print(f"Waiting for {wanted} worker{'s' * (wanted != 1)} to connect.")
        while len(self.connected) < wanted:
            # Waits of 0.1 s at most: a signal that lands just as a wait begins is seen as it ends.
            if self.monitor.poll(100):
                self.update(wanted)
        # Only a join extends the wait, never past a second: a port scanner must not hold it up.
        give_up_at = time.monotonic() + 5 * JOIN_QUIET_SECONDS
        start_at = time.monotonic() + JOIN_QUIET_SECONDS
        while (remaining := start_at - time.monotonic()) > 0:
            if self.monitor.poll(max(1, int(remaining * 1000))) and self.update(wanted) > 0:
                start_at = min(time.monotonic() + JOIN_QUIET_SECONDS, give_up_at)

    def update(self, wanted: int = 0) -> int:
        """Take one monitor event, print the count if it changed, and return the change."""
        first_frame, _endpoint = self.monitor.recv_multipart()
        # The event (16 bits), then its value: for these events, the connection's descriptor.
        event, fd = struct.unpack("=HI", first_frame[:6])
        before = len(self.connected)
        if event == zmq.EVENT_ACCEPTED:
            self.handshaking.append(fd)
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and self.handshaking:
            # libzmq does not say which connection it was: the one accepted last is likeliest.
            self.connected.add(self.handshaking.pop())
        elif event == zmq.EVENT_DISCONNECTED:
            # A connection that never finished its handshake (a port scanner) was never a worker.
            self.connected.discard(fd)
            if fd in self.handshaking:
                self.handshaking.remove(fd)
        count = len(self.connected)
        if wanted and count != before:
            print(f"Workers connected: {count}" + f" of {wanted}" * (count <= wanted))
        elif count > before:
            print(f"A worker joined: {count} connected.")
        elif count < before:
            print(f"A worker left: {count} connected.", file=sys.stderr)
        return count - before


class Run:
    """The tasks of one run: which are still to send, which are answered, who did what."""

    def __init__(self, name: str, tasks: int) -> None:
        self.name = name
        self.workloads = {task_id: random.randint(1, 100) for task_id in range(1, tasks + 1)}
        self.total_work_ms = sum(self.workloads.values())
        self.unsent = list(reversed(self.workloads))
        self.answered: set[int] = set()
        self.tasks_per_worker: Counter[str] = Counter()
        self.started = self.last_result = time.monotonic()
        self.rounds = self.sent_again = self.duplicates = 0

    def unanswered(self) -> int:
        return len(self.workloads) - len(self.answered)

    def send_missing_again(self) -> None:
        """Queue each task still without a result to be sent once more, as one more round."""
        queued_or_answered = self.answered | set(self.unsent)
        self.unsent += [task_id for task_id in self.workloads if task_id not in queued_or_answered]
        self.rounds += 1
        self.last_result = time.monotonic()

    def take(self, frames: list[bytes]) -> None:
        """Count one result, or say in one line why it is refused."""
        try:
            worker_name, task_id = self.check(load_result(frames))
        except ValueError as error:
            print(f"Ignored a result: {error}", file=sys.stderr)
            return
        self.answered.add(task_id)
        self.tasks_per_worker[worker_name] += 1
        self.last_result = time.monotonic()
        workload_ms = self.workloads[task_id]
        done = f"{len(self.answered)}/{len(self.workloads)}"
        # repr: a name from the network may hold escape codes for the terminal.
        print(f"Result {done} from {worker_name!r}: task {task_id}, {workload_ms} ms")

    def check(self, result: tuple[str, str, object, object]) -> tuple[str, int]:
        """(worker name, task id) of a result that answers a task of this run, or raise."""
        worker_name, run_name, workload_ms, task_id = result
        if run_name != self.name:
            raise ValueError(f"it answers another run's task ({run_name!r})")
        if not isinstance(task_id, int) or self.workloads.get(task_id) != workload_ms:
            raise ValueError("it answers no task of this run")
        if task_id in self.answered:
            self.duplicates += 1
            raise ValueError(f"task {task_id} was answered already")
        return worker_name, task_id

    def print_summary(self) -> None:
        elapsed = time.monotonic() - self.started
        print(f"All {len(self.workloads)} results in.")
        if self.rounds:
            print(f"Tasks sent again: {self.sent_again}; duplicates ignored: {self.duplicates}.")
        for worker_name, count in sorted(self.tasks_per_worker.items()):
            print(f"  {worker_name!r}: {count} tasks")
        workers = len(self.tasks_per_worker)
        ideal = self.total_work_ms / 1000 / workers
        print(f"Total simulated work: {self.total_work_ms / 1000:.2f} s")
        print(f"Elapsed: {elapsed:.2f} s (ideal, {workers} workers of one speed: {ideal:.2f} s)")


def load_result(frames: list[bytes]) -> tuple[str, str, object, object]:
    """(worker name, run name, workload, task id) from a result message, or raise ValueError."""
    data = frames[0] if len(frames) == 1 else b""
    # Only tuples, strings and small integers: other opcodes call functions (os.system), build
    # objects, or allocate gigabytes (LONG_BINPUT). Refused before anything is loaded.
    try:
        opcodes = {opcode.name for opcode, _argument, _position in pickletools.genops(data)}
        result = pickle.loads(data) if opcodes <= PLAIN_DATA_OPCODES else None
    except Exception:
        raise ValueError("not one frame of pickle") from None
    if not (isinstance(result, tuple) and len(result) == 4):
        raise ValueError("expected a pickled (worker, run, workload, task id) of plain data")
    worker_name, run_name, workload_ms, task_id = result
    if not (isinstance(worker_name, str) and isinstance(run_name, str)):
        raise ValueError("expected the names of the worker and of the run")
    if len(worker_name) > MAX_NAME_CHARACTERS:
        raise ValueError(f"a worker name of {len(worker_name)} characters: at most 200")
    return worker_name, run_name, workload_ms, task_id


def set_listen_backlog_and_keepalive(socket: zmq.Socket[bytes]) -> None:
    """Take a thousand workers joining at once, and drop one whose host vanished."""
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
        description="Pipeline ventilator and sink: send tasks to workers, collect their results.",
        epilog="Other machines cannot reach the default endpoints: pass --bind tcp://*:5557 "
        "--results tcp://*:5558 to listen on every interface (see secure/ first).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "name", nargs="?",
        # New for every run, so that a result still on its way from an earlier run is refused.
        default=f"ventilator-{secrets.token_hex(3)}",
        help="sent with every task, and back with each result; new for every run",
    )  # fmt: skip
    parser.add_argument(
        "--bind", default=DEFAULT_TASKS_ENDPOINT, metavar="ENDPOINT",
        help="where to hand out tasks: tcp://HOST:PORT, or ipc://PATH",
    )  # fmt: skip
    parser.add_argument(
        "--results", default=DEFAULT_RESULTS_ENDPOINT, metavar="ENDPOINT",
        help="where to collect the results",
    )  # fmt: skip
    parser.add_argument("--tasks", type=int, default=100, metavar="N", help="tasks to send")
    parser.add_argument(
        "--workers", type=int, default=3, metavar="W",
        help="how many workers to wait for before sending the first task",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS",
        help="give up when no result has come for this long",
    )  # fmt: skip
    parser.add_argument(
        "--retries", type=int, default=3, metavar="N",
        help="rounds of sending the missing tasks again, each after --timeout without a result",
    )  # fmt: skip
    args = parser.parse_args()
    if args.retries < 0:
        parser.error(f"--retries must be 0 or more, not {args.retries}")
    if not 1 <= args.tasks <= MAX_TASKS:
        parser.error(f"--tasks must be 1 to {MAX_TASKS:,}, not {args.tasks}")
    if args.workers < 1:
        parser.error(f"--workers must be 1 or more, not {args.workers}")
    if not args.timeout > 0:
        parser.error(f"--timeout must be a number of seconds above 0, not {args.timeout}")
    if len(args.name) > MAX_NAME_CHARACTERS:
        parser.error(f"NAME is {len(args.name)} characters long: at most {MAX_NAME_CHARACTERS}")
    return args


if __name__ == "__main__":
    sys.exit(main())
