"""A SIGTERM or Ctrl-C that lands while a script is still setting up ends it promptly too.

The handler raises KeyboardInterrupt wherever the script is. During the set-up (the context,
the sockets, their monitors, bind or connect), that can leave a socket that nothing will close,
and the context's term() then waits on it for ever. The window is narrow: on a quiet machine
here, the hangs came from signals 0.02 to 0.45 ms after the script installed its SIGTERM
handler, in a start-up of 30 to 40 ms that varies by more than that from run to run. Delays
counted from the start of the process hit it as rarely as once in 200 runs; counted from the
moment the handler is installed, as here, in one run in five to seven.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq.auth

from conftest import WAIT, Endpoints, Launcher, Process

# Every run must be over this long after its signal: a script stuck in term() never is.
STOP_WITHIN = 2.0
# What a script may end with: 130 from its handler; the default action of the signal if it
# landed before the handler was in place; 0 or 1 if it was finishing anyway.
EXIT_CODES = {130, 0, 1, -signal.SIGTERM, -signal.SIGINT}
# Delays, after the set-up has begun, spread up to this and crowded towards its start (half are
# under a quarter of it): past the window on a quiet machine, which a loaded one stretches.
LATEST_DELAY = 0.002
# Most runs exit within a few ms of the signal; one that has not after this is set aside, and
# judged at its deadline while the next runs go on, so that a hang costs the sweep no time.
QUICK_EXIT = 0.3
# Python prints every thread's stack on SIGABRT: where a hung script waits, for the report.
ENV = {"PYTHONFAULTHANDLER": "1"}

SIGTERM_CAUGHT = 1 << (signal.SIGTERM - 1)
STATUS_FIELD = re.compile(rb"^(SigCgt|Threads):\s*([0-9a-f]+)$", re.MULTILINE)


def arguments(script: str, endpoints: Endpoints, run: int, keys: Path) -> list[str]:
    """Fresh endpoints for each run: a hung run still holds the ones it bound. The CURVE twins
    get their keys, and the servers an allow-list: the authenticator starts in the set-up too."""
    server = Path(script).name.startswith("server_")
    option = "--bind" if server else "--connect"
    extra = ["--results", endpoints.ipc(f"results-{run}")] if "pipeline" in script else []
    if script.startswith("secure/") and server:
        extra += ["--curve-secret", str(keys / "server.key_secret"), "--curve-clients", str(keys)]
    elif script.startswith("secure/"):
        extra += ["--curve-server", str(keys / "server.key")]
    return [option, endpoints.ipc(f"main-{run}"), *extra]


class SetUpWatch:
    """Sees the moment a script's set-up begins: when it has installed its SIGTERM handler or
    ZeroMQ has started its threads, whichever comes first (a script may install its handler
    only once its sockets are ready, and a signal before then must not hang it either)."""

    def __init__(self) -> None:
        # CPU time, in ns, that each run had used by then: the imports before it take the same
        # on every run, whatever the load, and most of the start-up.
        self.cpu_before: list[int] = []

    def wait(self, process: Process) -> bool:
        """Wait for that moment: False if the script exited first, or did not get there
        within WAIT.

        Read from /proc as fast as it will answer: the window that matters is a fraction of a
        millisecond, and a poll with sleeps in it would see the moment too late. But only over
        the last half of the imports: spinning through the whole start-up of every run took
        CPU time that the scripts, six tests at a time on two cores, were waiting for.
        """
        deadline = time.monotonic() + WAIT
        spin_from = min(self.cpu_before, default=0) // 2
        # Opened once, read again and again: each read from the start is the process's now.
        status = os.open(f"/proc/{process.popen.pid}/status", os.O_RDONLY)
        schedstat = open_if_there(f"/proc/{process.popen.pid}/schedstat")
        try:
            while cpu_time(schedstat) < spin_from and running(process, deadline):
                # Nothing to see yet: a wait for the event, not the test's delay.
                time.sleep(0.001)
            while running(process, deadline):
                fields = dict(STATUS_FIELD.findall(os.pread(status, 8192, 0)))
                if int(fields[b"SigCgt"], 16) & SIGTERM_CAUGHT or int(fields[b"Threads"]) > 1:
                    self.cpu_before.append(cpu_time(schedstat))
                    return True
            return False
        finally:
            os.close(status)
            if schedstat is not None:
                os.close(schedstat)


def open_if_there(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


def cpu_time(schedstat: int | None) -> int:
    """The CPU time the process has used, in ns: 0 where the kernel does not keep it."""
    if schedstat is None:
        return 0
    return int(os.pread(schedstat, 256, 0).split()[0])


def running(process: Process, deadline: float) -> bool:
    # Only this reaps it: until then, a process that has exited still has its /proc files.
    return process.popen.poll() is None and time.monotonic() < deadline


@dataclass
class Run:
    process: Process
    signum: int
    delay: float
    sent: float

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        return f"{name} {self.delay * 1000:.3f} ms into the set-up"


def exit_code(process: Process, timeout: float) -> int | None:
    """Its exit code once it has exited and its output is all read; None if still running."""
    try:
        return process.wait(max(0.0, timeout))
    except AssertionError:  # Process.wait's way of saying that it is still running
        return None


def what_went_wrong(run: Run, code: int | None) -> str | None:
    if code is None:
        # Its stacks onto stderr, for the report; then the kill.
        run.process.signal(signal.SIGABRT)
        exit_code(run.process, WAIT)
        run.process.kill()
        return f"still running {STOP_WITHIN:g} s later"
    if code not in EXIT_CODES:
        return f"exit code {code}"
    if "Traceback" in run.process.stderr:
        return "a traceback on stderr"
    return None


def signal_during_start_up(
    launch: Launcher, script: str, endpoints: Endpoints, keys: Path, tries: int
) -> None:
    rng = random.Random()
    # One delay from each of `tries` equal slices, so that even a few runs cover the range.
    delays = [LATEST_DELAY * ((slice + rng.random()) / tries) ** 2 for slice in range(tries)]
    rng.shuffle(delays)
    signals = [signal.SIGINT if run % 3 == 2 else signal.SIGTERM for run in range(tries)]

    watch = SetUpWatch()
    problems: list[tuple[Run, str]] = []
    set_aside: list[Run] = []

    def judge(run: Run, code: int | None) -> None:
        problem = what_went_wrong(run, code)
        if problem is not None:
            problems.append((run, problem))

    for number, (delay, signum) in enumerate(zip(delays, signals)):
        process = launch.script(script, *arguments(script, endpoints, number, keys), env=ENV)
        assert watch.wait(process), f"its set-up never began:\n{process.describe()}"
        # The deliberate delay, which is the point of the test: it places the signal at a
        # chosen moment of the set-up. Spun, not slept: time.sleep overshoots by about 0.1 ms,
        # a good part of the window.
        signal_at = time.perf_counter() + delay
        while time.perf_counter() < signal_at:
            pass
        process.signal(signum)
        run = Run(process, signum, delay, time.monotonic())
        code = exit_code(process, QUICK_EXIT)
        if code is None:
            set_aside.append(run)
        else:
            judge(run, code)
        # Those set aside earlier whose deadline has come: exited by now, or hung.
        for late in [late for late in set_aside if late.process.popen.poll() is not None]:
            set_aside.remove(late)
            judge(late, exit_code(late.process, WAIT))
        for late in [late for late in set_aside if time.monotonic() > late.sent + STOP_WITHIN]:
            set_aside.remove(late)
            judge(late, exit_code(late.process, 0.0))
    for late in set_aside:
        judge(late, exit_code(late.process, late.sent + STOP_WITHIN - time.monotonic()))

    if problems:
        listed = "".join(f"\n  {run}: {problem}" for run, problem in problems)
        # The whole output of the first run that went wrong in each way.
        first = {problem: run for run, problem in reversed(problems)}
        shown = "".join(
            f"\n\n{run}, {problem}:\n{run.process.describe()}" for problem, run in first.items()
        )
        raise AssertionError(
            f"{script}: {len(problems)} of {tries} runs went wrong:{listed}{shown}"
        )


PLAIN = [
    "server_req_repl.py",
    "client_req_repl.py",
    "server_broadcast.py",
    "client_broadcast.py",
    "server_pipeline.py",
    "client_pipeline.py",
]
SCRIPTS = PLAIN + [f"secure/{script}" for script in PLAIN]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A server's key pair, and a folder that holds it: an allow-list with its public key."""
    folder = tmp_path_factory.mktemp("keys")
    zmq.auth.create_certificates(folder, "server")
    return folder


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_signal_during_the_set_up_ends_the_script_promptly(
    launch: Launcher, endpoints: Endpoints, keys: Path, script: str
) -> None:
    # Five runs, each script: where one run in six hung, the twelve tests together failed on
    # nearly every run of the suite. The slow sweep below is the thorough one.
    signal_during_start_up(launch, script, endpoints, keys, tries=5)


# Slow: a hundred runs of each script take 4 to 5 s alone, some 20 s six at a time on two cores.
@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_signal_during_the_set_up_ends_the_script_promptly_in_a_hundred_runs(
    launch: Launcher, endpoints: Endpoints, keys: Path, script: str
) -> None:
    signal_during_start_up(launch, script, endpoints, keys, tries=100)
