"""Ctrl-C (SIGINT) and SIGTERM end every long-running script within a second, with exit code 130."""

from __future__ import annotations

import os
import pickle
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from conftest import ROOT, WAIT, WORKER_READY, Endpoints, Launcher, Pipeline, Process, receive

Context = zmq.Context[zmq.Socket[bytes]]
SIGNALS = [signal.SIGINT, signal.SIGTERM]


def stop_with(process: Process, signum: int) -> None:
    """Send the signal, then check the exit: prompt, code 130, one line and no traceback."""
    sent = time.monotonic()
    process.signal(signum)
    code = process.wait()
    assert time.monotonic() - sent < 1.0, process.describe()
    assert code == 130, process.describe()
    assert "Traceback" not in process.stderr
    assert process.lines["stderr"][-1].startswith("Interrupted"), process.describe()


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda signum: signal.Signals(signum).name)
@pytest.mark.parametrize(
    ("script", "endpoint_option", "ready"),
    [
        ("server_req_repl.py", "--bind", "^Request-reply server on "),
        ("server_broadcast.py", "--bind", "^Publishing on "),
        ("client_broadcast.py", "--connect", "^Waiting for 5 messages"),
        ("client_pipeline.py", "--connect", WORKER_READY),
        ("server_pipeline.py", "--bind", "^Waiting for 3 workers to connect"),
    ],
)
def test_a_waiting_script_stops_on_the_signal(
    launch: Launcher,
    endpoints: Endpoints,
    script: str,
    endpoint_option: str,
    ready: str,
    signum: int,
) -> None:
    extra = ["--results", endpoints.ipc("results")] if "pipeline" in script else []
    process = launch.script(script, endpoint_option, endpoints.ipc("main"), *extra)
    process.expect(ready)

    stop_with(process, signum)


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda signum: signal.Signals(signum).name)
def test_request_client_waiting_for_a_reply_stops_on_the_signal(
    launch: Launcher, endpoints: Endpoints, context: Context, signum: int
) -> None:
    # A server that takes the request and never answers: the client is blocked in recv.
    silent_server = context.socket(zmq.REP)
    silent_server.bind(endpoints.ipc("reqrep"))
    client = launch.script(
        "client_req_repl.py", "--connect", endpoints.ipc("reqrep"), "--timeout", str(WAIT)
    )
    assert receive(silent_server) == [b"Hello world 1"]

    stop_with(client, signum)


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda signum: signal.Signals(signum).name)
def test_worker_in_the_middle_of_a_long_task_stops_on_the_signal(
    launch: Launcher, endpoints: Endpoints, context: Context, signum: int
) -> None:
    tasks = context.socket(zmq.PUSH)
    tasks.bind(endpoints.ipc("tasks"))
    worker = launch.script(
        "client_pipeline.py", "--connect", endpoints.ipc("tasks"), "--results", endpoints.ipc("r")
    )
    tasks.send(pickle.dumps(("bare", 10_000)))
    worker.expect(r"^Task from 'bare': 10000 ms$")

    stop_with(worker, signum)


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda signum: signal.Signals(signum).name)
def test_sink_waiting_for_results_stops_on_the_signal(
    pipeline: Pipeline, context: Context, signum: int
) -> None:
    ventilator = pipeline.ventilator("--workers", "1", "--timeout", str(WAIT))
    # A worker that takes the tasks and never sends a result.
    tasks = context.socket(zmq.PULL)
    tasks.connect(pipeline.tasks)
    receive(tasks)
    ventilator.expect("^Sent 100 tasks")

    stop_with(ventilator, signum)


WAITING_SCRIPTS = [
    ("server_req_repl.py", "--bind", "^Request-reply server on "),
    ("server_broadcast.py", "--bind", "^Publishing on "),
    ("client_broadcast.py", "--connect", "^Waiting for 5 messages"),
    ("client_pipeline.py", "--connect", WORKER_READY),
    ("server_pipeline.py", "--bind", "^Waiting for 3 workers to connect"),
]


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not installed")
@pytest.mark.parametrize(
    ("script", "endpoint_option", "ready"),
    [WAITING_SCRIPTS[0], WAITING_SCRIPTS[1], WAITING_SCRIPTS[3]],
    ids=["request-reply", "publish-subscribe", "pipeline"],
)
def test_sigterm_to_the_process_group_of_uv_run_ends_the_script_cleanly(
    launch: Launcher, endpoints: Endpoints, script: str, endpoint_option: str, ready: str
) -> None:
    # What `timeout`, `kill -- -PGID` and systemd do: the script gets the signal from the kill
    # and again from uv, which forwards it.
    extra = ["--results", endpoints.ipc("results")] if "pipeline" in script else []
    process = launch.start(
        ["uv", "run", "--quiet", script, endpoint_option, endpoints.ipc("main"), *extra]
    )
    process.expect(ready)

    sent = time.monotonic()
    os.killpg(process.popen.pid, signal.SIGTERM)

    assert process.wait() == 130, process.describe()
    assert time.monotonic() - sent < 1.0, process.describe()
    assert process.lines["stderr"] == [process.lines["stderr"][-1]], process.describe()
    assert process.lines["stderr"][-1].startswith("Interrupted"), process.describe()


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not installed")
def test_the_test_harness_kills_the_script_that_uv_run_started_with_it(
    launch: Launcher, endpoints: Endpoints
) -> None:
    # Else a failed test hangs in its teardown: the script holds the pipes that uv was given.
    process = launch.start(
        ["uv", "run", "--quiet", "server_req_repl.py", "--bind", endpoints.ipc("main")]
    )
    process.expect("^Request-reply server on ")
    uv = process.popen.pid
    # uv may start it from any of its threads: each lists its own children.
    tasks = Path(f"/proc/{uv}/task").iterdir()
    [script] = [pid for task in tasks for pid in (task / "children").read_text().split()]
    # Readable once that process has exited, whoever its parent is by then.
    script_exit = os.pidfd_open(int(script))

    process.kill()

    try:
        exited, _, _ = select.select([script_exit], [], [], WAIT)
    finally:
        os.close(script_exit)
    assert exited, f"uv's script (pid {script}) outlived the kill"


def test_signals_that_keep_coming_during_the_shutdown_change_nothing(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    tasks = context.socket(zmq.PUSH)
    tasks.bind(endpoints.ipc("tasks"))
    # No sink: the result waits in the worker's queue, and the shutdown lingers to deliver it.
    worker = launch.script(
        "client_pipeline.py", "--connect", endpoints.ipc("tasks"), "--results", endpoints.ipc("r")
    )
    tasks.send(pickle.dumps(("bare", 1)))
    worker.expect(r"^Task from 'bare': 1 ms$")

    sent = time.monotonic()
    # A user pressing Ctrl-C again and again, and a service manager's SIGTERM among them.
    while worker.popen.poll() is None and time.monotonic() - sent < WAIT:
        worker.signal(signal.SIGINT)
        worker.signal(signal.SIGTERM)
        time.sleep(0.005)

    assert worker.wait() == 130, worker.describe()
    assert time.monotonic() - sent < 1.0, worker.describe()
    assert worker.lines["stderr"] == ["Interrupted: shutting down."]


@pytest.mark.parametrize(("script", "endpoint_option", "ready"), WAITING_SCRIPTS)
def test_output_into_a_pipe_shows_each_line_as_it_is_printed(
    launch: Launcher, endpoints: Endpoints, script: str, endpoint_option: str, ready: str
) -> None:
    # As with `| tee log`: no PYTHONUNBUFFERED, so Python would buffer stdout in 8 KiB blocks.
    extra = ["--results", endpoints.ipc("results")] if "pipeline" in script else []
    process = launch.script(
        script, endpoint_option, endpoints.ipc("main"), *extra, unbuffered=False
    )

    process.expect(ready)
    assert process.popen.poll() is None


def test_a_closed_output_pipe_ends_the_script_quietly(endpoints: Endpoints) -> None:
    # As with `| head -n 2`: the reader goes away while the publisher is still printing.
    publisher = subprocess.Popen(
        [sys.executable, str(ROOT / "server_broadcast.py"), "--bind", endpoints.ipc("pubsub"),
         "--interval", "0.01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert publisher.stdout is not None and publisher.stderr is not None
        assert publisher.stdout.readline().startswith(b"Publishing on ")
        assert publisher.stdout.readline().startswith(b"Sent TIME")
        publisher.stdout.close()

        # Ended by SIGPIPE, as `yes | head` ends (the shell reports 141): no traceback, no line.
        assert publisher.wait(WAIT) == -signal.SIGPIPE
        assert publisher.stderr.read() == b""
    finally:
        publisher.kill()
        publisher.wait()


@pytest.mark.parametrize(("script", "endpoint_option", "ready"), WAITING_SCRIPTS)
def test_sigterm_after_the_output_pipe_closed_still_ends_the_script_quietly(
    endpoints: Endpoints, script: str, endpoint_option: str, ready: str
) -> None:
    # As with `2>&1 | head -n 1`, then a SIGTERM: the Interrupted line has nowhere to go.
    extra = ["--results", endpoints.ipc("results")] if "pipeline" in script else []
    process = subprocess.Popen(
        [sys.executable, str(ROOT / script), endpoint_option, endpoints.ipc("main"), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        # Up to the line that says it is set up, with Ctrl-C and SIGTERM no longer held back.
        for line in process.stdout:
            if re.search(ready, line.decode()):
                break
        else:
            raise AssertionError(f"{script} ended before it was set up")
        process.stdout.close()

        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)

        # 130, or SIGPIPE's end as it writes that line: either way promptly, and no traceback
        # (which would have ended it with 1 or 120).
        assert process.wait(WAIT) in (130, -signal.SIGPIPE)
        assert time.monotonic() - sent < 1.0
    finally:
        process.kill()
        process.wait()
