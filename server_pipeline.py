# /// script
# requires-python = ">=3.9"
# dependencies = ["pyzmq>=26"]
# ///
"""Pipeline (push-pull), the ventilator and the sink: hand out tasks, collect the results.

It binds a PUSH socket on tcp://127.0.0.1:5557 for tasks and a PULL socket on
tcp://127.0.0.1:5558 for results. It waits until --workers workers (3 by default) have connected,
then sends --tasks tasks (100), each a pickled (NAME, workload) tuple with a workload of 1-100
milliseconds of simulated work. PUSH deals the tasks round-robin to the connected workers; each
result names the worker, the run (NAME) and the workload. Once every result is back it prints a
summary and exits 0; if results stop coming for --timeout seconds it says how many are missing and
exits 1, or with --retries N first sends the missing tasks again, up to N rounds. Ctrl-C or
SIGTERM stop it with exit code 130. With --curve-secret both sockets encrypt with CURVE, and with
--curve-clients only the workers whose keys it holds get in.

Start it, then three workers, each in its own terminal:

    uv run server_pipeline.py
    uv run client_pipeline.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import pickle
import pickletools
import random
import secrets
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterator

import zmq
from zmq.utils import z85

DEFAULT_TASKS_ENDPOINT = "tcp://127.0.0.1:5557"
DEFAULT_RESULTS_ENDPOINT = "tcp://127.0.0.1:5558"
MAX_MESSAGE_BYTES = 4096
MAX_WORKLOAD_MS = 10_000
MAX_NAME_CHARACTERS = 200
MAX_TASKS = 1_000_000
MAX_KEY_FILE_BYTES = 64 * 1024
# On both sockets: libzmq then refuses ZMTP 1.0 and 2.0 peers, and tells the authenticator.
ZAP_DOMAIN = "pipeline"
# Connections queued before libzmq accepts them: past libzmq's 100, a joiner waits 1 s to retry.
LISTEN_BACKLOG = 1024
# Workers started before the ventilator retry every 0.1 s: wait this long after the last joins.
JOIN_QUIET_SECONDS = 0.2
WORKER_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
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
        return ventilate_and_collect(args, server_secret_key(args))
    except KeyFileError as error:
        print(error, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return interrupted("Interrupted: shutting down.")
    except BrokenPipeError:
        return output_closed()


def ventilate_and_collect(args: argparse.Namespace, curve_secret_key: bytes | None) -> int:
    """The pattern: bind PUSH and PULL, wait for the workers, then send tasks and take results."""
    with (
        zmq.Context() as context,
        only_clients_in(context, args.curve_clients, ZAP_DOMAIN),
        context.socket(zmq.PUSH) as ventilator,
        context.socket(zmq.PULL) as sink,
        # PUSH deals tasks only to the workers it has when it sends: count them from the start.
        ventilator.get_monitor_socket(WORKER_EVENTS | Refusals.EVENTS) as monitor,
        sink.get_monitor_socket(Refusals.EVENTS) as sink_monitor,
        Workers(monitor, sink_monitor, curve=curve_secret_key is not None) as workers,
    ):
        for socket in (ventilator, sink):
            set_ventilator_and_sink_limits(socket)
            become_curve_server(socket, curve_secret_key)
        for socket, endpoint in ((ventilator, args.bind), (sink, args.results)):
            try:
                socket.bind(endpoint)
            except zmq.ZMQError as error:
                print(f"Cannot bind: {error}", file=sys.stderr)
                return 1
        print(f"Ventilator on {args.bind}, sink on {args.results} (Ctrl-C to stop).")
        print_who_may_connect(args)
        workers.wait_for(args.workers)

        run = Run(args.name, args.tasks)
        poller = zmq.Poller()
        poller.register(sink, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        while run.unanswered():
            # Offer tasks only while some are unsent, and only when a worker's queue has room.
            poller.register(ventilator, zmq.POLLOUT if run.unsent else 0)
            ready = dict(poller.poll(100))
            if ventilator in ready:
                send_while_there_is_room(ventilator, run)
            if sink in ready:
                run.take(sink.recv_multipart())
            if monitor in ready:
                workers.update()
            workers.report_refusals()
            if run.out_of_time(args.timeout, args.retries, len(workers.connected)):
                return 1
        run.print_summary()
        return 0


def set_ventilator_and_sink_limits(socket: zmq.Socket[bytes]) -> None:
    """Bound what any peer can make the ventilator or the sink hold or wait for."""
    # A ZAP domain makes libzmq refuse ZMTP 1.0 and 2.0 peers: PUSH would deal them tasks.
    socket.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    # Unsent tasks and unread results are worthless once the run is over or given up.
    socket.setsockopt(zmq.LINGER, 0)
    # libzmq drops a peer whose frame is over the cap, even on PUSH, where peers send nothing.
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    socket.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
    drop_vanished_peers(socket)


def send_while_there_is_room(ventilator: zmq.Socket[bytes], run: Run) -> None:
    """Send unsent tasks until every worker's queue is full or none are left."""
    while run.unsent:
        workload_ms = run.unsent[-1]
        try:
            ventilator.send(pickle.dumps((run.name, workload_ms)), zmq.NOBLOCK)
        except zmq.Again:
            return
        run.sent(workload_ms)


class Workers:
    """How many workers are connected, from the task socket's monitor events."""

    def __init__(
        self, monitor: zmq.Socket[bytes], sink_monitor: zmq.Socket[bytes], curve: bool
    ) -> None:
        self.monitor = monitor
        # A socket has one monitor only: the task socket's refusals come through `monitor`.
        self.refusals = Refusals(None, curve)
        self.sink_refusals = Refusals(sink_monitor, curve)
        self.handshaking: list[int] = []
        self.connected: set[int] = set()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exception: object) -> None:
        self.refusals.print_pending()
        self.sink_refusals.print_pending()

    def wait_for(self, wanted: int) -> None:
        """Return once `wanted` workers are connected and no other has joined for a moment."""
        print(f"Waiting for {plural(wanted, 'worker')} to connect.")
        while len(self.connected) < wanted:
            if self.monitor.poll(100):
                self.update(wanted)
            self.report_refusals()
        # Only a join extends the wait, never past a second: a port scanner must not hold it up.
        give_up_at = time.monotonic() + 5 * JOIN_QUIET_SECONDS
        start_at = time.monotonic() + JOIN_QUIET_SECONDS
        while (remaining := start_at - time.monotonic()) > 0:
            if self.monitor.poll(max(1, int(remaining * 1000))) and self.update(wanted) > 0:
                start_at = min(time.monotonic() + JOIN_QUIET_SECONDS, give_up_at)

    def report_refusals(self) -> None:
        """Print the connections to either socket that libzmq refused in their handshake."""
        self.refusals.report()
        self.sink_refusals.report()

    def update(self, wanted: int | None = None) -> int:
        """Take one monitor event, print the count when it changes, and return the change."""
        event, value = recv_event(self.monitor)
        if event & Refusals.EVENTS:
            self.refusals.refused(event, value)
            return 0
        fd = value
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
        if len(self.connected) == before:
            return 0
        if wanted is not None:
            of_wanted = f" of {wanted}" if len(self.connected) <= wanted else ""
            print(f"Workers connected: {len(self.connected)}{of_wanted}")
        elif len(self.connected) > before:
            print(f"A worker joined: {len(self.connected)} connected.")
        else:
            print(f"A worker left: {len(self.connected)} connected.", file=sys.stderr)
        return len(self.connected) - before


class DuplicateResult(ValueError):
    """A second result for a task that was sent again: at-least-once delivery allows it."""


class Run:
    """The tasks of one run: which are still to send, which wait for a result, who did what."""

    def __init__(self, name: str, tasks: int) -> None:
        self.name = name
        self.tasks = tasks
        self.unsent = [random.randint(1, 100) for _ in range(tasks)]
        self.total_work_ms = sum(self.unsent)
        # Tasks of equal workload are interchangeable: a result answers any one of them.
        self.awaiting: Counter[int] = Counter()
        self.answered: Counter[int] = Counter()
        self.to_send_again: Counter[int] = Counter()
        self.first_sends = self.sent_again = self.rounds = self.duplicates = 0
        self.received = 0
        self.tasks_per_worker: Counter[str] = Counter()
        self.started = self.last_result = time.monotonic()

    def unanswered(self) -> int:
        return self.tasks - self.received

    def sent(self, workload_ms: int) -> None:
        self.unsent.pop()
        if self.to_send_again[workload_ms] > 0:
            self.to_send_again[workload_ms] -= 1
            self.sent_again += 1
            return
        self.awaiting[workload_ms] += 1
        self.first_sends += 1
        if self.first_sends == self.tasks:
            print(f"Sent {self.tasks} tasks, {self.total_work_ms} ms of work in all.")

    def send_missing_again(self, timeout: float, retries: int, workers: int) -> None:
        """Queue every task still without a result to be sent again, as one more round."""
        missing = list((self.awaiting - self.to_send_again).elements())
        self.to_send_again.update(missing)
        self.unsent.extend(missing)
        self.rounds += 1
        self.last_result = time.monotonic()
        waited = f"No result for {timeout:g} s"
        count, round_of = plural(len(missing), "missing task"), f"round {self.rounds} of {retries}"
        if workers:
            print(f"{waited}: sending the {count} again ({round_of}).", file=sys.stderr)
        else:
            print(
                f"{waited}: {count} and no worker connected: they go to the next worker that "
                f"joins ({round_of}).",
                file=sys.stderr,
            )

    def take(self, frames: list[bytes]) -> None:
        """Count one result, or say in one line why it is refused."""
        try:
            worker_name, workload_ms = self.check(load_result(frames))
        except DuplicateResult as error:
            self.duplicates += 1
            print(f"Ignored a duplicate result: {error}", file=sys.stderr)
            return
        except ValueError as error:
            print(f"Ignored a result: {printable(str(error), 300)}", file=sys.stderr)
            return
        self.awaiting[workload_ms] -= 1
        self.answered[workload_ms] += 1
        if self.to_send_again[workload_ms] > self.awaiting[workload_ms]:
            # Answered before it went out again: no need to send it.
            self.to_send_again[workload_ms] -= 1
            self.unsent.remove(workload_ms)
        self.received += 1
        self.tasks_per_worker[worker_name] += 1
        self.last_result = time.monotonic()
        print(
            f"Result {self.received}/{self.tasks} from {printable(worker_name)}: {workload_ms} ms"
        )

    def check(self, result: tuple[str, str, int]) -> tuple[str, int]:
        """(worker name, workload) of a result that answers a task of this run, or raise."""
        worker_name, run_name, workload_ms = result
        if run_name != self.name:
            raise ValueError(f"it answers another run's task ({printable(run_name)})")
        if self.awaiting[workload_ms] <= 0 and self.answered[workload_ms] > 0:
            raise DuplicateResult(f"the {workload_ms} ms task was answered already.")
        if self.awaiting[workload_ms] <= 0:
            raise ValueError(f"no task of {workload_ms} ms is waiting for a result")
        return worker_name, workload_ms

    def seconds_without_results(self) -> float:
        return time.monotonic() - self.last_result

    def out_of_time(self, timeout: float, retries: int, workers: int) -> bool:
        """True once results have stopped for `timeout` and every retry round is spent;
        until then, send the missing tasks again after each pause."""
        if self.seconds_without_results() <= timeout:
            return False
        if self.rounds == retries:
            self.report_missing(timeout)
            return True
        self.send_missing_again(timeout, retries, workers)
        return False

    def report_missing(self, timeout: float) -> None:
        missing = self.unanswered()
        print(
            f"No result for {timeout:g} s: {missing} of {self.tasks} results missing.",
            file=sys.stderr,
        )

    def print_summary(self) -> None:
        elapsed = time.monotonic() - self.started
        print(f"All {self.tasks} results in.")
        if self.sent_again or self.duplicates:
            print(
                f"Sent {plural(self.sent_again, 'task')} again; "
                f"ignored {plural(self.duplicates, 'duplicate result')}."
            )
        for worker_name, count in sorted(self.tasks_per_worker.items()):
            print(f"  {printable(worker_name)}: {count} tasks")
        workers = len(self.tasks_per_worker)
        ideal = self.total_work_ms / 1000 / workers
        print(f"Total simulated work: {self.total_work_ms / 1000:.2f} s")
        print(f"Elapsed: {elapsed:.2f} s (ideal with {plural(workers, 'worker')}: {ideal:.2f} s)")


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


def load_result(frames: list[bytes]) -> tuple[str, str, int]:
    """(worker name, run name, workload in ms) from a result message, or raise ValueError."""
    if len(frames) != 1:
        raise ValueError(f"expected 1 frame, got {len(frames)}")
    value = load_plain_pickle(frames[0])
    if not (isinstance(value, tuple) and len(value) == 3):
        raise ValueError(f"expected (worker, run, workload), got {describe(value)}")
    worker_name, run_name, workload_ms = value
    check_name(worker_name)
    check_name(run_name)
    check_workload(workload_ms)
    return worker_name, run_name, workload_ms


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
        description="Pipeline ventilator and sink: send tasks to workers, collect their results.",
        epilog="Other machines cannot reach the default endpoints; pass --bind tcp://*:5557 "
        "--results tcp://*:5558 to listen on every interface.",
    )
    parser.add_argument(
        "name",
        nargs="?",
        # Unique to each run, so that a result still on its way from an earlier run is refused.
        default=f"ventilator-{secrets.token_hex(3)}",
        help="name sent with every task, which workers send back with each result "
        "(default: ventilator-XXXXXX, different for every run)",
    )
    parser.add_argument(
        "--bind",
        default=DEFAULT_TASKS_ENDPOINT,
        type=endpoint,
        metavar="ENDPOINT",
        help=f"endpoint that hands out tasks (default: {DEFAULT_TASKS_ENDPOINT})",
    )
    parser.add_argument(
        "--results",
        default=DEFAULT_RESULTS_ENDPOINT,
        type=endpoint,
        metavar="ENDPOINT",
        help=f"endpoint that collects results (default: {DEFAULT_RESULTS_ENDPOINT})",
    )
    parser.add_argument(
        "--tasks", type=at_least_one, default=100, metavar="N", help="tasks to send (default: 100)"
    )
    parser.add_argument(
        "--workers",
        type=at_least_one,
        default=3,
        metavar="W",
        help="workers to wait for before sending the first task (default: 3)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="give up when no result has come for this long (default: 10)",
    )
    parser.add_argument(
        "--retries",
        type=zero_or_more,
        default=0,
        metavar="N",
        help="when results stop for --timeout, send the missing tasks again to the workers "
        "still connected, up to N rounds, before giving up (default: 0)",
    )
    add_curve_server_arguments(parser)
    args = parser.parse_args()
    if args.curve_clients is not None and args.curve_secret is None:
        parser.error("--curve-clients needs --curve-secret")
    if args.tasks > MAX_TASKS:
        parser.error(f"--tasks {args.tasks} is more than {MAX_TASKS:,}")
    if len(args.name) > MAX_NAME_CHARACTERS:
        parser.error(f"NAME is {len(args.name)} characters long: at most {MAX_NAME_CHARACTERS}")
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
