"""Request-reply: server_req_repl.py and client_req_repl.py, as a user runs them."""

from __future__ import annotations

import os

import zmq

from conftest import Endpoints, Launcher, receive

Context = zmq.Context[zmq.Socket[bytes]]


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


def test_a_reply_of_several_frames_is_printed_and_the_next_request_goes_out(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    endpoint = endpoints.ipc("reqrep")
    server = context.socket(zmq.REP)
    server.bind(endpoint)
    client = launch.script("client_req_repl.py", "--connect", endpoint, "first", "second")

    assert receive(server) == [b"first"]
    server.send_multipart([b"two", b"frames"])
    assert receive(server) == [b"second"]
    server.send(b"second*")
    assert receive(server) == [b"STOP"]
    server.send(b"STOP*")

    assert client.wait() == 0, client.describe()
    assert client.lines["stdout"] == [
        "Received reply b'two' + b'frames'",
        "Received reply b'second*'",
        "Sent STOP: the server confirmed it (b'STOP*') and shuts down.",
    ]


def test_stop_that_is_never_confirmed_is_not_reported_as_done(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    endpoint = endpoints.ipc("reqrep")
    # A server that answers the first request, takes STOP and stays silent, still connected.
    server = context.socket(zmq.ROUTER)
    server.bind(endpoint)
    client = launch.script("client_req_repl.py", "--connect", endpoint, "--timeout", "1")
    peer, empty, request = receive(server)
    server.send_multipart([peer, empty, request + b"*"])
    assert receive(server)[2] == b"STOP"

    assert client.wait() == 1, client.describe()
    assert client.lines["stderr"] == [
        "Sent STOP, but within 1 s the server neither confirmed it nor closed the connection."
    ]
    assert "shuts down" not in client.stdout


def test_a_server_that_dropped_the_request_for_its_size_is_not_called_missing(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.tcp()
    server = launch.reply_server(endpoint)

    client = launch.script(
        "client_req_repl.py", "--connect", endpoint, "--timeout", "1", "x" * 70_000
    )

    assert client.wait() == 1, client.describe()
    assert client.lines["stderr"] == [
        f"No reply from {endpoint} within 1 s: the connection was lost (the server stopped, "
        "or refused a request over its size limit)."
    ]
    assert server.popen.poll() is None


def test_a_server_that_is_up_but_silent_is_not_called_missing(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    endpoint = endpoints.ipc("reqrep")
    silent = context.socket(zmq.REP)
    silent.bind(endpoint)

    client = launch.script("client_req_repl.py", "--connect", endpoint, "--timeout", "1")

    assert client.wait() == 1, client.describe()
    assert client.lines["stderr"] == [
        f"No reply from {endpoint} within 1 s: the server is connected but has not answered."
    ]


def test_a_long_request_is_printed_cut_to_one_line(launch: Launcher, endpoints: Endpoints) -> None:
    endpoint = endpoints.ipc("reqrep")
    server = launch.reply_server(endpoint)

    client = launch.script("client_req_repl.py", "--connect", endpoint, "y" * 60_000)

    assert client.wait() == 0, client.describe()
    client.expect(r"^Received reply b'y{200}'\.\.\. \(60,001 bytes\)$")
    server.expect(r"^Received b'y{200}'\.\.\. \(60,000 bytes\)$")


def test_a_server_that_went_away_between_requests_is_not_called_silent(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    endpoint = endpoints.ipc("reqrep")
    server = context.socket(zmq.REP)
    server.bind(endpoint)
    client = launch.script(
        "client_req_repl.py",
        "--connect",
        endpoint,
        "--timeout",
        "1",
        "--no-stop",
        "first",
        "second",
    )
    assert receive(server) == [b"first"]
    server.send(b"first*")
    server.close(linger=1000)

    assert client.wait() == 1, client.describe()
    [line] = client.lines["stderr"]
    assert line in (
        f"No reply from {endpoint} within 1 s: the server had closed the connection, and "
        "nothing has answered since.",
        f"No reply from {endpoint} within 1 s: the connection was lost (the server stopped, or "
        "refused a request over its size limit).",
    )
