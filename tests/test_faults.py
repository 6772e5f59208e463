"""Faults: missing peers, dead peers, restarted peers, taken ports."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from conftest import Endpoints, Launcher, Pipeline

SERVERS = ["server_req_repl.py", "server_broadcast.py", "server_pipeline.py"]


def test_request_client_without_server_gives_up_within_its_timeout(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.tcp()
    started = time.monotonic()
    client = launch.script("client_req_repl.py", "--connect", endpoint, "--timeout", "0.5")

    assert client.wait() == 1, client.describe()
    # The timeout plus one second; a LINGER wait for the unsent request would add two more.
    assert time.monotonic() - started < 0.5 + 1.0
    client.expect(
        rf"^No reply from {re.escape(endpoint)} within 0\.5 s\. Is the server running\? "
        r"Start it with: uv run server_req_repl\.py$",
        stream="stderr",
    )
    assert len(client.lines["stderr"]) == 1


def test_subscriber_without_publisher_gives_up_within_its_timeout(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.tcp()
    started = time.monotonic()
    subscriber = launch.script("client_broadcast.py", "--connect", endpoint, "--timeout", "0.5")

    assert subscriber.wait() == 1, subscriber.describe()
    assert time.monotonic() - started < 0.5 + 1.0
    subscriber.expect(rf"^No message from {re.escape(endpoint)} within 0\.5 s\.", stream="stderr")
    assert len(subscriber.lines["stderr"]) == 1


def test_request_client_started_before_the_server_is_answered_once_it_is_up(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.tcp()
    client = launch.script("client_req_repl.py", "--connect", endpoint, "--timeout", "15")

    launch.script("server_req_repl.py", "--bind", endpoint)

    assert client.wait() == 0, client.describe()
    client.expect(r"^Received reply b'Hello world 1\*'$")


def test_a_killed_server_started_again_serves_the_next_client(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.tcp()
    first = launch.reply_server(endpoint)
    first.signal(signal.SIGKILL)
    first.wait()

    second = launch.reply_server(endpoint)
    client = launch.script("client_req_repl.py", "--connect", endpoint)

    assert client.wait() == 0, client.describe()
    assert second.wait() == 0, second.describe()


def test_subscriber_resumes_when_the_publisher_restarts(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.tcp()
    first = launch.script("server_broadcast.py", "--bind", endpoint, "--interval", "0.2")
    first.expect("^Publishing on ")
    subscriber = launch.script("client_broadcast.py", "--connect", endpoint, "--count", "10")
    subscriber.expect("^TIME")
    first.signal(signal.SIGKILL)
    first.wait()
    printed_before_restart = len(subscriber.lines["stdout"]) - 1
    assert printed_before_restart < 8, "the first publisher sent nearly everything: no restart seen"

    second = launch.script("server_broadcast.py", "--bind", endpoint, "--interval", "0.02")

    assert subscriber.wait() == 0, subscriber.describe()
    assert len(subscriber.lines["stdout"]) == 11
    second.expect("^Sent TIME")


def test_worker_started_before_the_ventilator_connects_when_it_is_up(
    launch: Launcher, endpoints: Endpoints
) -> None:
    pipeline = Pipeline(launch, endpoints.tcp(), endpoints.tcp())
    pipeline.worker("early")

    ventilator = pipeline.ventilator("--workers", "1", "--tasks", "5")

    assert ventilator.wait() == 0, ventilator.describe()
    ventilator.expect(r"^  'early': 5 tasks$")


def test_a_worker_killed_mid_run_is_reported_as_missing_results(pipeline: Pipeline) -> None:
    # Should the survivor stall past the timeout, the count missing is still the one printed.
    ventilator = pipeline.ventilator("--workers", "2", "--tasks", "10", "--timeout", "0.5")
    survivor, victim = pipeline.workers("survivor", "victim")
    victim.expect("^Task from ")
    victim.signal(signal.SIGKILL)
    victim.wait()

    assert ventilator.wait() == 1, ventilator.describe()
    received = len([line for line in ventilator.lines["stdout"] if line.startswith("Result ")])
    missing = 10 - received
    assert missing > 0
    ventilator.expect(
        rf"^No result for 0\.5 s: {missing} of 10 results missing\.$", stream="stderr"
    )
    assert "All 10 results in." not in ventilator.stdout
    assert survivor.popen.poll() is None


@pytest.mark.parametrize("server", SERVERS)
def test_a_second_server_on_a_taken_port_says_so_in_one_line(
    launch: Launcher, endpoints: Endpoints, server: str
) -> None:
    endpoint = endpoints.tcp()
    # The pipeline's results endpoint too: its default port would collide with a parallel run.
    results = ["--results", endpoints.ipc("results")] if server == "server_pipeline.py" else []
    first = launch.script(server, "--bind", endpoint, *results)
    first.expect(r"^(Request-reply server|Publishing|Ventilator) on ")

    second = launch.script(server, "--bind", endpoint, *results)

    assert second.wait() == 1, second.describe()
    assert second.lines["stderr"] == [f"Cannot bind: Address already in use (addr='{endpoint}')"]
    assert first.popen.poll() is None


def test_ventilator_with_its_results_port_taken_says_so_in_one_line(
    launch: Launcher, endpoints: Endpoints
) -> None:
    taken = endpoints.tcp()
    launch.reply_server(taken)

    ventilator = launch.script(
        "server_pipeline.py", "--bind", endpoints.ipc("tasks"), "--results", taken
    )

    assert ventilator.wait() == 1, ventilator.describe()
    assert ventilator.lines["stderr"] == [f"Cannot bind: Address already in use (addr='{taken}')"]


CLIENTS = ["client_req_repl.py", "client_broadcast.py", "client_pipeline.py"]


@pytest.mark.parametrize("script", [*SERVERS, *CLIENTS])
def test_a_malformed_endpoint_is_one_line_not_a_traceback(launch: Launcher, script: str) -> None:
    option = "--bind" if script.startswith("server") else "--connect"
    process = launch.script(script, option, "tcp//no-scheme:5555")

    assert process.wait() == 1, process.describe()
    assert len(process.lines["stderr"]) == 1
    assert process.lines["stderr"][0].startswith("Cannot ")
    assert "tcp//no-scheme:5555" in process.stderr


@pytest.mark.parametrize(
    ("script", "option"),
    [
        *[(server, "--bind") for server in SERVERS],
        ("server_pipeline.py", "--results"),
        *[(client, "--connect") for client in CLIENTS],
        ("client_pipeline.py", "--results"),
    ],
)
def test_an_endpoint_that_is_not_utf8_is_one_line_not_a_traceback(
    launch: Launcher, endpoints: Endpoints, script: str, option: str
) -> None:
    # A path typed in a terminal whose encoding is not UTF-8: libzmq takes endpoints in UTF-8.
    endpoint = os.fsdecode(os.fsencode(endpoints.ipc("caf")) + b"\xe9")
    # The pipeline's other endpoint is a good one (the last of an option given twice counts).
    first = "--bind" if script.startswith("server") else "--connect"
    good = [first, endpoints.ipc("tasks"), "--results", endpoints.ipc("results")]
    process = launch.script(script, *good * ("pipeline" in script), option, endpoint)

    assert process.wait() == 1, process.describe()
    verb = "bind" if script.startswith("server") else "connect"
    [line] = process.lines["stderr"]
    assert line.startswith(f"Cannot {verb}: ") and "\\udce9" in line, process.describe()
