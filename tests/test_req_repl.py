"""Request-reply: server_req_repl.py and client_req_repl.py, as a user runs them."""

from __future__ import annotations

import os

from conftest import Endpoints, Launcher


def test_client_gets_the_reply_and_its_stop_ends_the_server(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.ipc("reqrep")
    server = launch.reply_server(endpoint)

    client = launch.script("client_req_repl.py", "--connect", endpoint)

    assert client.wait() == 0, client.describe()
    client.expect(r"^Received reply b'Hello world 1\*'$")
    client.expect(r"^Sent STOP")
    server.expect(r"^Received b'Hello world 1'$")
    server.expect(r"^Received b'STOP'$")
    assert server.wait() == 0, server.describe()


def test_messages_are_sent_in_turn_and_each_reply_printed(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.ipc("reqrep")
    server = launch.reply_server(endpoint)

    client = launch.script("client_req_repl.py", "--connect", endpoint, "one", "two", "three")

    assert client.wait() == 0, client.describe()
    replies = [line for line in client.lines["stdout"] if line.startswith("Received reply")]
    assert replies == [
        "Received reply b'one*'",
        "Received reply b'two*'",
        "Received reply b'three*'",
    ]
    assert server.wait() == 0, server.describe()


def test_no_stop_leaves_the_server_serving_the_next_client(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.ipc("reqrep")
    server = launch.reply_server(endpoint)

    first = launch.script("client_req_repl.py", "--connect", endpoint, "--no-stop", "first")
    assert first.wait() == 0, first.describe()
    assert "STOP" not in first.stdout

    second = launch.script("client_req_repl.py", "--connect", endpoint, "second")
    assert second.wait() == 0, second.describe()
    second.expect(r"^Received reply b'second\*'$")
    assert server.wait() == 0, server.describe()
    assert "b'STOP'" in server.stdout.splitlines()[-2]


def test_the_server_also_answers_stop_for_a_client_that_waits(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.ipc("reqrep")
    server = launch.reply_server(endpoint)

    waiting_client = launch.python(
        "import sys, zmq\n"
        "requester = zmq.Context().socket(zmq.REQ)\n"
        "requester.connect(sys.argv[1])\n"
        "requester.send(b'STOP')\n"
        "print(requester.recv())\n",
        endpoint,
    )

    waiting_client.expect(r"^b'STOP\*'$")
    assert server.wait() == 0, server.describe()


def test_a_request_typed_in_any_encoding_is_sent_as_typed(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.ipc("reqrep")
    launch.reply_server(endpoint)

    latin1 = os.fsdecode(b"caf\xe9")
    client = launch.script("client_req_repl.py", "--connect", endpoint, latin1, "café")

    assert client.wait() == 0, client.describe()
    client.expect(r"^Received reply b'caf\\xe9\*'$")
    client.expect(r"^Received reply b'caf\\xc3\\xa9\*'$")
