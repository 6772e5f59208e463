"""Ctrl-C (SIGINT) and SIGTERM end every long-running script within a second, with exit code 130."""

from __future__ import annotations

import pickle
import signal
import time

import pytest
import zmq

from conftest import WAIT, Endpoints, Launcher, Pipeline, Process, receive

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
        ("client_pipeline.py", "--connect", "^Waiting for tasks"),
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
    worker.expect(r"^Task from bare: 10000 ms$")

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
