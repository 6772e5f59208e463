"""Start the scripts as a user would, wait on what they print, and always stop them."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import os
import py_compile
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest
import zmq

# Python's default, which some machines turn off with PYTHONDONTWRITEBYTECODE: cache what is
# compiled. Else the test workers (started after this runs) and the suite's some 300 script
# processes would compile pytest, pyzmq and the rewritten test modules anew at every run.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False


def cache_what_this_process_compiled() -> None:
    """Write the bytecode of every module imported so far whose cache file is missing.

    This process imported pytest and pyzmq before the line above could let it cache them: on the
    first run after `uv sync`, the eight test workers would each compile them again, all at once.
    """
    for module in list(sys.modules.values()):
        spec = getattr(module, "__spec__", None)
        # Plain source files only: pytest caches the test modules it rewrites on its own.
        if spec is None or not isinstance(spec.loader, SourceFileLoader) or not spec.cached:
            continue
        if not os.path.exists(spec.cached):
            with contextlib.suppress(OSError, py_compile.PyCompileError):
                py_compile.compile(spec.origin, cfile=spec.cached, doraise=True)


cache_what_this_process_compiled()

ROOT = Path(__file__).resolve().parent.parent
POST_PEERS = Path(__file__).resolve().parent / "post_peers"
# Generous: a loaded CI machine may be slow, but a wait that runs out means a real failure.
WAIT = 20.0


# A shell without job control starts background jobs with SIGINT ignored, and an ignored signal
# stays ignored across exec: a script started from such a run would never see Ctrl-C. A handled
# one is reset to the default by exec, so handle it here, as Python does where it may. (Doing it
# in each child instead, with preexec_fn, makes every start a full fork of the test process.)
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def load_script(name: str) -> types.ModuleType:
    """One of the six scripts as a module, to test a helper of it alone; main() does not run."""
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), ROOT / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Process:
    """A running script whose stdout and stderr are collected line by line as they come."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        unbuffered: bool = True,
        read_stdout: bool = True,
    ) -> None:
        self.argv = list(argv)
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._read_up_to = {"stdout": 0, "stderr": 0}
        self._changed = threading.Condition()
        environment = {**os.environ, **(env or {})}
        # Unbuffered unless a test checks what the scripts do about buffering themselves.
        environment.pop("PYTHONUNBUFFERED", None)
        if unbuffered:
            environment["PYTHONUNBUFFERED"] = "1"
        self.popen = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="backslashreplace",
            start_new_session=True,
        )
        # Unless a test holds the output back, as a paused terminal does: it reads it itself.
        streams = [("stdout", self.popen.stdout)] * read_stdout + [("stderr", self.popen.stderr)]
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in streams
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                self.lines[name].append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def stdout(self) -> str:
        return "\n".join(self.lines["stdout"])

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines["stderr"])

    def describe(self) -> str:
        text = (
            f"{' '.join(self.argv)}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )
        # An argument that is not UTF-8 would make the report unsendable to pytest-xdist.
        return text.encode("utf-8", "backslashreplace").decode()

    def expect(self, pattern: str, stream: str = "stdout", timeout: float = WAIT) -> re.Match[str]:
        """Wait for the next line matching `pattern`, past the lines earlier calls consumed."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                lines = self.lines[stream]
                for index in range(self._read_up_to[stream], len(lines)):
                    match = regex.search(lines[index])
                    if match:
                        self._read_up_to[stream] = index + 1
                        return match
                self._read_up_to[stream] = len(lines)
                finished = self.popen.poll() is not None and not any(
                    reader.is_alive() for reader in self._readers
                )
                remaining = deadline - time.monotonic()
                if finished or remaining <= 0:
                    why = "exited" if finished else f"did not print it within {timeout:g} s"
                    raise AssertionError(
                        f"expected {pattern!r} on {stream}, but it {why}:\n{self.describe()}"
                    )
                self._changed.wait(min(remaining, 0.2))

    def wait(self, timeout: float = WAIT) -> int:
        """Wait for the process to exit and for all its output to be read; return its code."""
        deadline = time.monotonic() + timeout
        # Its output ends as it exits, and the readers see that at once; Popen.wait(timeout) alone
        # would notice the exit only at its next look, up to 50 ms later.
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        try:
            return self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout:g} s:\n{self.describe()}") from None

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def peak_memory_bytes(self) -> int:
        """The most memory the process has held at once (VmHWM), from /proc."""
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
        assert match, status
        return int(match[1]) * 1024

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far, user and system, from /proc."""
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def all_lines(self) -> list[str]:
        return self.lines["stdout"] + self.lines["stderr"]

    def kill(self) -> None:
        # Its whole process group (start_new_session made one): `uv run` leaves the script it
        # started holding our pipes. Only before the leader is reaped: until then its pid, which
        # names the group, cannot have gone to another process.
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        for reader in self._readers:
            reader.join(WAIT)


class Launcher:
    """Starts scripts for one test and kills whatever is still running when the test ends."""

    def __init__(self) -> None:
        self.processes: list[Process] = []

    def start(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        unbuffered: bool = True,
        read_stdout: bool = True,
    ) -> Process:
        process = Process(argv, env, unbuffered, read_stdout)
        self.processes.append(process)
        return process

    def script(
        self,
        name: str,
        *args: str,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
        unbuffered: bool = True,
        read_stdout: bool = True,
    ) -> Process:
        """Run one of the repository's six scripts, as `python SCRIPT ARGS`."""
        argv = [*prefix, sys.executable, str(ROOT / name), *args]
        return self.start(argv, env, unbuffered, read_stdout)

    def reply_server(self, endpoint: str) -> Process:
        """server_req_repl.py, once it is waiting for requests."""
        process = self.script("server_req_repl.py", "--bind", endpoint)
        process.expect(r"^Request-reply server on .*Waiting for requests")
        return process

    def post_peer(self, name: str, *args: str) -> Process:
        """Run one of the post's snippets (tests/post_peers): they take the endpoint in argv."""
        return self.start([sys.executable, str(POST_PEERS / name), *args])

    def python(self, code: str, *args: str) -> Process:
        """Run a few lines of bare pyzmq as a peer: a hostile client, a bare baseline."""
        return self.start([sys.executable, "-c", code, *args])

    def stop_all(self) -> None:
        for process in self.processes:
            process.kill()


# Their tests spend most of their time waiting out a script's timeout. Queued first, they wait
# while the tests that keep the CPU busy run; near the end, as in file order, they left both cores
# idle there (a quarter to most of a second of the run, in side-by-side runs here).
MODULES_THAT_MOSTLY_WAIT = ("test_retries.py", "test_req_repl.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in MODULES_THAT_MOSTLY_WAIT)


@pytest.fixture
def launch() -> Iterator[Launcher]:
    launcher = Launcher()
    try:
        yield launcher
    finally:
        launcher.stop_all()


class Endpoints:
    """Fresh endpoints for one test, so that runs in parallel never collide."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.reserved: list[socket.socket] = []

    def ipc(self, name: str) -> str:
        return f"ipc://{self.folder / name}"

    def tcp_port(self) -> int:
        """A free port, held for this test: closed at once, it could become a parallel test's
        port, or the local end of any outgoing connection, before the script binds it. Held
        with SO_REUSEADDR and never listening, it still lets libzmq (which sets SO_REUSEADDR)
        bind it, and a connection to it is refused until then."""
        probe = socket.socket()
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", 0))
        self.reserved.append(probe)
        port: int = probe.getsockname()[1]
        return port

    def tcp(self) -> str:
        return f"tcp://127.0.0.1:{self.tcp_port()}"

    def release(self) -> None:
        for probe in self.reserved:
            probe.close()


@pytest.fixture
def endpoints() -> Iterator[Endpoints]:
    # ipc paths must stay short (about 100 bytes), so not under pytest's long tmp_path.
    folder = Path(tempfile.mkdtemp(prefix="zmq-"))
    endpoints = Endpoints(folder)
    try:
        yield endpoints
    finally:
        endpoints.release()
        shutil.rmtree(folder, ignore_errors=True)


# What client_pipeline.py prints once it is connecting and set up to take tasks.
WORKER_READY = r"^Worker .* waits for tasks from "


class Pipeline:
    """The two endpoints of one pipeline run, and its two scripts started on them."""

    def __init__(self, launch: Launcher, tasks: str, results: str) -> None:
        self.launch = launch
        self.tasks = tasks
        self.results = results

    def ventilator(self, *args: str, env: dict[str, str] | None = None) -> Process:
        """server_pipeline.py, once it has bound both endpoints."""
        process = self.launch.script(
            "server_pipeline.py", "--bind", self.tasks, "--results", self.results, *args, env=env
        )
        process.expect(r"^Ventilator on ")
        return process

    def worker(self, *args: str, env: dict[str, str] | None = None) -> Process:
        """client_pipeline.py, once it is waiting for tasks."""
        process = self._start_worker(*args, env=env)
        process.expect(WORKER_READY)
        return process

    def workers(self, *names: str) -> list[Process]:
        """One client_pipeline.py per name, started at once as from several terminals, once
        each is waiting for tasks."""
        processes = [self._start_worker(name) for name in names]
        for process in processes:
            process.expect(WORKER_READY)
        return processes

    def _start_worker(self, *args: str, env: dict[str, str] | None = None) -> Process:
        return self.launch.script(
            "client_pipeline.py", *args, "--connect", self.tasks, "--results", self.results, env=env
        )

    def play_ventilator_and_sink(
        self, context: zmq.Context[zmq.Socket[bytes]]
    ) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
        """Bare PUSH and PULL sockets bound on the two endpoints, for a test that plays the
        ventilator and the sink around a worker."""
        tasks = context.socket(zmq.PUSH)
        tasks.setsockopt(zmq.SNDTIMEO, int(WAIT * 1000))
        tasks.bind(self.tasks)
        return tasks, self.play_sink(context)

    def play_sink(self, context: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
        """A bare PULL socket bound on the results endpoint, for a test that plays the sink."""
        results = context.socket(zmq.PULL)
        results.bind(self.results)
        return results

    def play_worker(
        self, context: zmq.Context[zmq.Socket[bytes]]
    ) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
        """Bare PULL and PUSH sockets on the two endpoints, for a test that plays the worker."""
        tasks = context.socket(zmq.PULL)
        tasks.connect(self.tasks)
        results = context.socket(zmq.PUSH)
        results.connect(self.results)
        return tasks, results


@pytest.fixture
def pipeline(launch: Launcher, endpoints: Endpoints) -> Pipeline:
    return Pipeline(launch, endpoints.ipc("tasks"), endpoints.ipc("results"))


def tasks_per_worker(ventilator: Process) -> dict[str, int]:
    """The ventilator's closing summary: how many tasks each worker completed. It prints each
    name as a string literal (repr), which literal_eval reads back."""
    summary = re.finditer(r"^  ('.*'|\".*\"): (\d+) tasks$", ventilator.stdout, re.MULTILINE)
    return {ast.literal_eval(match[1]): int(match[2]) for match in summary}


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A ZeroMQ context for the test's own bare sockets, destroyed without lingering."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    # For every socket made from it: one the test no longer holds is closed when it is collected,
    # before destroy() can set its linger, and would make destroy() wait for ever to deliver.
    context.setsockopt(zmq.LINGER, 0)
    try:
        yield context
    finally:
        context.destroy(linger=0)


def receive(socket: zmq.Socket[bytes], timeout: float = WAIT) -> list[bytes]:
    """The next message on a bare socket, or a failure once `timeout` seconds have passed."""
    if not socket.poll(int(timeout * 1000)):
        raise AssertionError(f"no message within {timeout:g} s")
    return socket.recv_multipart()


def publish_until(
    publisher: zmq.Socket[bytes], done: Callable[[], bool], *messages: list[bytes]
) -> None:
    """Send `messages` in turn, again and again, until `done()`: PUB drops what it sends before
    a subscription has arrived, and the test cannot see when that is."""
    deadline = time.monotonic() + WAIT
    while not done() and time.monotonic() < deadline:
        for frames in messages:
            publisher.send_multipart(frames)
        time.sleep(0.02)


def next_event(monitor: zmq.Socket[bytes]) -> int:
    """The event a socket monitor reports next, once one is waiting."""
    # The event is the first 16 bits of the first frame (zmq.utils.monitor would bring in
    # asyncio, which every one of the suite's workers would then import).
    event: int = struct.unpack("=H", monitor.recv_multipart()[0][:2])[0]
    return event


def wait_for_event(monitor: zmq.Socket[bytes], event: int, timeout: float = WAIT) -> None:
    """Wait until a socket monitor reports `event`, skipping the others."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if monitor.poll(int(remaining * 1000)) and next_event(monitor) == event:
            return
    raise AssertionError(f"no {zmq.Event(event).name} event within {timeout:g} s")


def zmtp_greeting(mechanism: bytes, as_server: bool = False) -> bytes:
    """A ZMTP 3.0 greeting, 64 bytes: signature, version 3.0, the security mechanism offered
    (NULL, PLAIN or CURVE), whether this end is the server of that mechanism, then filler."""
    signature = b"\xff" + b"\x00" * 8 + b"\x7f"
    return signature + b"\x03\x00" + mechanism.ljust(20, b"\x00") + bytes([as_server]) + bytes(31)


def zmtp_handshake(connection: socket.socket, socket_type: bytes, then: bytes = b"") -> None:
    """Speak a ZMTP 3.0 NULL handshake by hand on a TCP connection, as `socket_type`: what a
    hostile peer does to reach past what pyzmq would let it send. `then` goes out in the same
    send as the handshake's last command, so that it arrives with it."""
    connection.settimeout(WAIT)
    connection.sendall(zmtp_greeting(b"NULL"))
    received = b""
    while len(received) < 64:
        chunk = connection.recv(64 - len(received))
        assert chunk, "the peer closed the connection during the greeting"
        received += chunk
    ready = b"\x05READY\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    connection.sendall(b"\x04" + bytes([len(ready)]) + ready + then)


def zmtp_frame(body: bytes, more: bool = False) -> bytes:
    """One ZMTP 3.0 message frame, in its long form."""
    return bytes([0x02 | (0x01 if more else 0)]) + struct.pack(">Q", len(body)) + body
