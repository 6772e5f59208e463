"""The three patterns across separate network stacks: one server host, two client hosts.

Each host is a Linux network namespace; the server's namespace is joined to each client's by a
veth pair, so a client reaches the server only by the server's address on its own link, as
another machine would. Needs root and iproute2; skipped, saying why, without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from conftest import ROOT, Launcher, Process


@dataclass
class Hosts:
    server: str
    clients: list[str]
    # The server's address as each client sees it, in the same order as `clients`.
    server_addresses: list[str]

    def run(self, launch: Launcher, host: str, script: str, *args: str) -> Process:
        return launch.start(
            ["ip", "netns", "exec", host, sys.executable, str(ROOT / script), *args]
        )


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (the ip command) is not installed")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    tag = uuid.uuid4().hex[:6]
    server, clients = f"zmq-{tag}-srv", [f"zmq-{tag}-c1", f"zmq-{tag}-c2"]
    created: list[str] = []
    try:
        for name in (server, *clients):
            try:
                ip("netns", "add", name)
            except subprocess.CalledProcessError as error:
                pytest.skip(f"cannot create a network namespace: {error.stderr.decode().strip()}")
            created.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        addresses = []
        for number, client in enumerate(clients, start=1):
            # Interface names are made in this namespace first, so they carry the unique tag.
            server_end, client_end = f"z{tag}s{number}", f"z{tag}c{number}"
            ip(
                "link",
                "add",
                server_end,
                "netns",
                server,
                "type",
                "veth",
                "peer",
                "name",
                client_end,
                "netns",
                client,
            )
            subnet = f"10.231.{number}"
            ip("-n", server, "addr", "add", f"{subnet}.1/24", "dev", server_end)
            ip("-n", client, "addr", "add", f"{subnet}.2/24", "dev", client_end)
            ip("-n", server, "link", "set", server_end, "up")
            ip("-n", client, "link", "set", client_end, "up")
            addresses.append(f"{subnet}.1")
        yield Hosts(server, clients, addresses)
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def test_request_reply_across_hosts(launch: Launcher, hosts: Hosts) -> None:
    server = hosts.run(launch, hosts.server, "server_req_repl.py", "--bind", "tcp://*:5555")
    server.expect("^Request-reply server on tcp://\\*:5555")
    first_address, second_address = hosts.server_addresses

    first = hosts.run(
        launch,
        hosts.clients[0],
        "client_req_repl.py",
        "--connect",
        f"tcp://{first_address}:5555",
        "--no-stop",
        "from host 1",
    )
    assert first.wait() == 0, first.describe()
    second = hosts.run(
        launch,
        hosts.clients[1],
        "client_req_repl.py",
        "--connect",
        f"tcp://{second_address}:5555",
        "from host 2",
    )
    assert second.wait() == 0, second.describe()

    first.expect(r"^Received reply b'from host 1\*'$")
    second.expect(r"^Received reply b'from host 2\*'$")
    assert server.wait() == 0, server.describe()


DEFAULT_PORTS = {
    "server_req_repl.py": [5555],
    "server_broadcast.py": [5556],
    "server_pipeline.py": [5557, 5558],
}


def can_connect(host: str, address: str, port: int) -> bool:
    """Whether a plain TCP connection from `host` to address:port is accepted."""
    probe = (
        "import socket, sys\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    command = ["ip", "netns", "exec", host, sys.executable, "-c", probe, address, str(port)]
    return subprocess.run(command, capture_output=True, timeout=30).returncode == 0


@pytest.mark.parametrize("server", sorted(DEFAULT_PORTS))
def test_with_default_endpoints_a_server_is_reachable_from_its_own_host_only(
    launch: Launcher, hosts: Hosts, server: str
) -> None:
    process = hosts.run(launch, hosts.server, server)
    process.expect(r"^(Request-reply server|Publishing|Ventilator) on tcp://127\.0\.0\.1:")

    for port in DEFAULT_PORTS[server]:
        assert can_connect(hosts.server, "127.0.0.1", port)
        assert not can_connect(hosts.clients[0], hosts.server_addresses[0], port)


def test_publish_subscribe_across_hosts(launch: Launcher, hosts: Hosts) -> None:
    publisher = hosts.run(
        launch, hosts.server, "server_broadcast.py", "--bind", "tcp://*:5556", "--interval", "0.05"
    )
    publisher.expect("^Publishing on ")

    subscribers = [
        hosts.run(
            launch,
            client,
            "client_broadcast.py",
            "--connect",
            f"tcp://{address}:5556",
            "--count",
            "3",
        )
        for client, address in zip(hosts.clients, hosts.server_addresses)
    ]

    for subscriber in subscribers:
        assert subscriber.wait() == 0, subscriber.describe()
        assert len([line for line in subscriber.lines["stdout"] if line.startswith("TIME")]) == 3


def test_pipeline_across_hosts(launch: Launcher, hosts: Hosts) -> None:
    ventilator = hosts.run(
        launch,
        hosts.server,
        "server_pipeline.py",
        "--bind",
        "tcp://*:5557",
        "--results",
        "tcp://*:5558",
        "--workers",
        "2",
        "--tasks",
        "10",
    )
    ventilator.expect("^Waiting for 2 workers")

    for number, (client, address) in enumerate(zip(hosts.clients, hosts.server_addresses), 1):
        hosts.run(
            launch,
            client,
            "client_pipeline.py",
            f"host{number}",
            "--connect",
            f"tcp://{address}:5557",
            "--results",
            f"tcp://{address}:5558",
        )

    assert ventilator.wait() == 0, ventilator.describe()
    ventilator.expect(r"^  host1: 5 tasks$")
    ventilator.expect(r"^  host2: 5 tasks$")
