"""Scale: every socket that many peers join listens with a backlog big enough for them all."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import Endpoints, Launcher, Process

# What the README promises: a thousand subscribers starting at once.
PROMISED_PEERS = 1000


def listen_backlog(port: int) -> int:
    """The backlog of the socket listening on `port`, which `ss` shows as its Send-Q."""
    listing = subprocess.run(
        ["ss", "--listening", "--tcp", "--numeric", "--no-header", f"sport = :{port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert listing, f"nothing listens on port {port}"
    return int(listing[2])


needs_ss = pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss from iproute2")


def start_server(launch: Launcher, name: str, *args: str) -> Process:
    server = launch.script(name, *args)
    server.expect(r" on tcp://")
    return server


@needs_ss
def test_the_request_reply_server_takes_a_thousand_joiners_at_once(
    launch: Launcher, endpoints: Endpoints
) -> None:
    port = endpoints.tcp_port()
    start_server(launch, "server_req_repl.py", "--bind", f"tcp://127.0.0.1:{port}")

    assert listen_backlog(port) >= PROMISED_PEERS


@needs_ss
def test_the_publisher_takes_a_thousand_joiners_at_once(
    launch: Launcher, endpoints: Endpoints
) -> None:
    port = endpoints.tcp_port()
    start_server(launch, "server_broadcast.py", "--bind", f"tcp://127.0.0.1:{port}")

    assert listen_backlog(port) >= PROMISED_PEERS


@needs_ss
def test_the_ventilator_and_the_sink_take_a_thousand_joiners_at_once(
    launch: Launcher, endpoints: Endpoints
) -> None:
    tasks, results = endpoints.tcp_port(), endpoints.tcp_port()
    start_server(
        launch,
        "server_pipeline.py",
        "--bind",
        f"tcp://127.0.0.1:{tasks}",
        "--results",
        f"tcp://127.0.0.1:{results}",
    )

    assert listen_backlog(tasks) >= PROMISED_PEERS
    assert listen_backlog(results) >= PROMISED_PEERS
