"""CURVE: each pair encrypted, each server proven by its key, unknown clients refused."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
import zmq.auth

from conftest import (
    WAIT,
    Endpoints,
    Launcher,
    Pipeline,
    Process,
    tasks_per_worker,
    wait_for_event,
    zmtp_greeting,
)

REFUSED_KEY = r"^The server at \S+ refused this client's key \(ZAP status 400\)"
CLIENT_HAS_NO_CURVE = r"disagree on security: the server uses CURVE; pass --curve-server"
SERVER_HAS_NO_CURVE = r"disagree on security: this client uses CURVE and the server does not\.$"
# When the server hangs up first each time (likelier the busier the machine), the client never
# learns why: its timeout line, or the worker's hint, then names the mismatch as a possibility.
CLIENT_HAS_NO_CURVE_OR_CUT_OFF = (
    rf"{CLIENT_HAS_NO_CURVE}|cut off every handshake( for 2 s)?[.:] [Ii]f it uses CURVE, pass "
    r"--curve-server"
)
SERVER_HAS_NO_CURVE_OR_CUT_OFF = (
    rf"{SERVER_HAS_NO_CURVE}|cut off every (CURVE )?handshake.*does (it|the server) use CURVE\?"
)
# Short: where the mismatch stays hidden, the timeout line is the truth too. Each exact line is
# made certain by the tests with a raw peer that never hangs up first (offer_and_wait_for_hang_up).
MISMATCH_TIMEOUT = "1"
# Each side learns of a mismatch when it reads the other's greeting; the side that reads first
# hangs up, and the other then sees only a connection that ended: either line is the truth.
SERVER_SAW_NO_CURVE = (
    r"^(Refused a connection: the client does not use CURVE \(it needs --curve-server\)\."
    r"|A connection ended during its handshake \(.+\): if it was a client, does it use CURVE, "
    r"with this server's key\?)$"
)
SERVER_SAW_CURVE = (
    r"^(Refused a connection: the client uses CURVE and this server does not \(start it with "
    r"--curve-secret\)\.|A connection ended during its handshake \(.+\): if it was a client, "
    r"does it use CURVE\? This server does not\.)$"
)
# Long enough that a client which only gave up at its timeout fails the test's wait.
NEVER = str(10 * WAIT)


@dataclass
class Keys:
    """Key files as zmq.auth.create_certificates writes them: NAME.key and NAME.key_secret."""

    folder: Path

    def public(self, name: str) -> str:
        return str(self.folder / f"{name}.key")

    def secret(self, name: str) -> str:
        return str(self.folder / f"{name}.key_secret")

    @property
    def allowed(self) -> str:
        """The server's allow-list: the public key file of the client named "client" only."""
        return str(self.folder / "allowed")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("server", "client", "stranger", "impostor"):
        zmq.auth.create_certificates(folder, name)
        (folder / f"{name}.key_secret").chmod(0o600)
    (folder / "allowed").mkdir()
    shutil.copy(folder / "client.key", folder / "allowed" / "client.key")
    return Keys(folder)


def server_with_keys(keys: Keys) -> tuple[str, ...]:
    return ("--curve-secret", keys.secret("server"), "--curve-clients", keys.allowed)


def client_with_keys(keys: Keys, name: str = "client") -> tuple[str, ...]:
    return ("--curve-server", keys.public("server"), "--curve-secret", keys.secret(name))


# Request-reply


def reply_server(launch: Launcher, endpoint: str, *args: str) -> Process:
    server = launch.script("server_req_repl.py", "--bind", endpoint, *args)
    server.expect(r"^Request-reply server on .*Waiting for requests")
    return server


def test_request_reply_with_keys_on_both_sides_works_as_without(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    endpoint = endpoints.tcp()
    server = reply_server(launch, endpoint, *server_with_keys(keys))
    server.expect(rf"^CURVE: encrypted; only clients with a public key file in {keys.allowed} ")

    client = launch.script("client_req_repl.py", "--connect", endpoint, *client_with_keys(keys))

    assert client.wait() == 0, client.describe()
    client.expect(r"^Received reply b'Hello world 1\*'$")
    client.expect(r"^Sent STOP: the server confirmed it")
    assert server.wait() == 0, server.describe()
    assert "Refused" not in server.stderr


def test_request_reply_refuses_a_client_whose_key_is_not_allowed(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    endpoint = endpoints.tcp()
    server = reply_server(launch, endpoint, *server_with_keys(keys))

    client = launch.script(
        "client_req_repl.py", "--connect", endpoint, "--timeout", NEVER,
        *client_with_keys(keys, "stranger"),
    )  # fmt: skip

    assert client.wait() == 1, client.describe()
    client.expect(REFUSED_KEY, "stderr")
    assert "Traceback" not in client.stderr
    server.expect(
        r"^Refused a connection: the client's key is not in --curve-clients \(ZAP status 400\)",
        "stderr",
    )
    assert "Received" not in server.stdout


def test_without_an_allow_list_any_client_that_has_the_servers_key_gets_in(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    endpoint = endpoints.tcp()
    server = reply_server(launch, endpoint, "--curve-secret", keys.secret("server"))
    server.expect(r"^CURVE: encrypted; any client that has this server's public key may connect")

    # No --curve-secret: the client makes a key pair for this run.
    client = launch.script(
        "client_req_repl.py", "--connect", endpoint, "--curve-server", keys.public("server")
    )

    assert client.wait() == 0, client.describe()
    client.expect(r"^Received reply b'Hello world 1\*'$")


def test_a_client_with_a_key_made_for_the_run_is_refused_by_an_allow_list(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    endpoint = endpoints.tcp()
    reply_server(launch, endpoint, *server_with_keys(keys))

    client = launch.script(
        "client_req_repl.py", "--connect", endpoint, "--timeout", NEVER,
        "--curve-server", keys.public("server"),
    )  # fmt: skip

    assert client.wait() == 1, client.describe()
    client.expect(REFUSED_KEY, "stderr")


def test_a_plaintext_client_and_a_curve_server_say_they_disagree(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    endpoint = endpoints.tcp()
    server = reply_server(launch, endpoint, *server_with_keys(keys))

    client = launch.script(
        "client_req_repl.py", "--connect", endpoint, "--timeout", MISMATCH_TIMEOUT
    )

    assert client.wait() == 1, client.describe()
    client.expect(CLIENT_HAS_NO_CURVE_OR_CUT_OFF, "stderr")
    server.expect(SERVER_SAW_NO_CURVE, "stderr")


def test_a_curve_client_and_a_plaintext_server_say_they_disagree(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    endpoint = endpoints.tcp()
    server = reply_server(launch, endpoint)

    client = launch.script(
        "client_req_repl.py",
        "--connect",
        endpoint,
        "--timeout",
        MISMATCH_TIMEOUT,
        *client_with_keys(keys),
    )

    assert client.wait() == 1, client.describe()
    client.expect(SERVER_HAS_NO_CURVE_OR_CUT_OFF, "stderr")
    server.expect(SERVER_SAW_CURVE, "stderr")


def test_a_client_with_a_wrong_server_key_gets_no_reply_and_says_so_at_its_timeout(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    endpoint = endpoints.tcp()
    server = reply_server(launch, endpoint, *server_with_keys(keys))

    # The impostor's key stands for a server that is not this one.
    client = launch.script(
        "client_req_repl.py", "--connect", endpoint, "--timeout", "1",
        "--curve-server", keys.public("impostor"), "--curve-secret", keys.secret("client"),
    )  # fmt: skip

    assert client.wait() == 1, client.describe()
    client.expect(
        r"^No reply from \S+ within 1 s: the server cut off every CURVE handshake\. "
        r"Is --curve-server its public key file, and does the server use CURVE\?$",
        "stderr",
    )
    assert "Received" not in client.stdout
    server.expect(r"^Refused a connection: its CURVE handshake did not decrypt", "stderr")
    assert "Received" not in server.stdout


# Publish-subscribe


def publisher(launch: Launcher, endpoint: str, *args: str) -> Process:
    server = launch.script("server_broadcast.py", "--bind", endpoint, "--interval", "0.05", *args)
    server.expect(r"^Publishing on ")
    return server


def test_publish_subscribe_with_keys_on_both_sides_works_as_without(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    endpoint = endpoints.tcp()
    server = publisher(launch, endpoint, *server_with_keys(keys))

    subscriber = launch.script(
        "client_broadcast.py", "--connect", endpoint, "--count", "3", *client_with_keys(keys)
    )

    assert subscriber.wait() == 0, subscriber.describe()
    for _ in range(3):
        subscriber.expect(r"^TIME\w{3} \w{3} ")
    assert "Refused" not in server.stderr


def test_publish_subscribe_refuses_a_subscriber_whose_key_is_not_allowed(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    endpoint = endpoints.tcp()
    server = publisher(launch, endpoint, *server_with_keys(keys))

    subscriber = launch.script(
        "client_broadcast.py", "--connect", endpoint, "--timeout", NEVER,
        *client_with_keys(keys, "stranger"),
    )  # fmt: skip

    assert subscriber.wait() == 1, subscriber.describe()
    subscriber.expect(REFUSED_KEY, "stderr")
    assert not re.search(r"^TIME", subscriber.stdout, re.MULTILINE)
    server.expect(r"^Refused a connection: the client's key is not in --curve-clients", "stderr")


def test_a_plaintext_subscriber_and_a_curve_publisher_say_they_disagree(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    endpoint = endpoints.tcp()
    server = publisher(launch, endpoint, *server_with_keys(keys))

    subscriber = launch.script(
        "client_broadcast.py", "--connect", endpoint, "--timeout", MISMATCH_TIMEOUT
    )

    assert subscriber.wait() == 1, subscriber.describe()
    subscriber.expect(CLIENT_HAS_NO_CURVE_OR_CUT_OFF, "stderr")
    server.expect(SERVER_SAW_NO_CURVE, "stderr")


def test_a_curve_subscriber_and_a_plaintext_publisher_say_they_disagree(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    endpoint = endpoints.tcp()
    server = publisher(launch, endpoint)

    subscriber = launch.script(
        "client_broadcast.py",
        "--connect",
        endpoint,
        "--timeout",
        MISMATCH_TIMEOUT,
        *client_with_keys(keys),
    )

    assert subscriber.wait() == 1, subscriber.describe()
    subscriber.expect(SERVER_HAS_NO_CURVE_OR_CUT_OFF, "stderr")
    server.expect(SERVER_SAW_CURVE, "stderr")


def test_a_subscriber_with_a_wrong_server_key_hears_nothing_and_says_so_at_its_timeout(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    endpoint = endpoints.tcp()
    publisher(launch, endpoint, *server_with_keys(keys))

    subscriber = launch.script(
        "client_broadcast.py", "--connect", endpoint, "--timeout", "1",
        "--curve-server", keys.public("impostor"), "--curve-secret", keys.secret("client"),
    )  # fmt: skip

    assert subscriber.wait() == 1, subscriber.describe()
    subscriber.expect(
        r"^No message from \S+ within 1 s: it cut off every CURVE handshake", "stderr"
    )
    assert not re.search(r"^TIME", subscriber.stdout, re.MULTILINE)


# Pipeline


@pytest.fixture
def tcp_pipeline(launch: Launcher, endpoints: Endpoints) -> Pipeline:
    return Pipeline(launch, endpoints.tcp(), endpoints.tcp())


def test_pipeline_with_keys_on_both_sides_works_as_without(
    tcp_pipeline: Pipeline, keys: Keys
) -> None:
    ventilator = tcp_pipeline.ventilator("--workers", "2", "--tasks", "10", *server_with_keys(keys))
    for name in ("alpha", "beta"):
        tcp_pipeline.worker(name, *client_with_keys(keys))

    assert ventilator.wait() == 0, ventilator.describe()
    assert tasks_per_worker(ventilator) == {"alpha": 5, "beta": 5}
    assert "Refused" not in ventilator.stderr


def test_pipeline_refuses_a_worker_whose_key_is_not_allowed(
    tcp_pipeline: Pipeline, keys: Keys
) -> None:
    ventilator = tcp_pipeline.ventilator("--workers", "1", "--tasks", "4", *server_with_keys(keys))

    stranger = tcp_pipeline.worker("stranger", *client_with_keys(keys, "stranger"))

    # It can never be served: it exits rather than wait for ever.
    assert stranger.wait() == 1, stranger.describe()
    stranger.expect(REFUSED_KEY, "stderr")
    ventilator.expect(
        r"^Refused a connection: the client's key is not in --curve-clients", "stderr"
    )
    # It was never counted: the one allowed worker gets every task.
    tcp_pipeline.worker("allowed", *client_with_keys(keys))
    assert ventilator.wait() == 0, ventilator.describe()
    assert tasks_per_worker(ventilator) == {"allowed": 4}


# Slow at worst: when the ventilator hangs up first every time, the worker speaks after 2 s.
@pytest.mark.slow
def test_a_plaintext_worker_and_a_curve_ventilator_say_they_disagree(
    tcp_pipeline: Pipeline, keys: Keys
) -> None:
    ventilator = tcp_pipeline.ventilator(*server_with_keys(keys))

    worker = tcp_pipeline.worker("plain")

    told = worker.expect(CLIENT_HAS_NO_CURVE_OR_CUT_OFF, "stderr")
    if "disagree" in told[0]:
        assert worker.wait() == 1, worker.describe()
    ventilator.expect(SERVER_SAW_NO_CURVE, "stderr")
    assert "Workers connected" not in ventilator.stdout


# Slow at worst: when the ventilator hangs up first every time, the worker speaks after 2 s.
@pytest.mark.slow
def test_a_curve_worker_and_a_plaintext_ventilator_say_they_disagree(
    tcp_pipeline: Pipeline, keys: Keys
) -> None:
    ventilator = tcp_pipeline.ventilator()

    worker = tcp_pipeline.worker("secret", *client_with_keys(keys))

    told = worker.expect(SERVER_HAS_NO_CURVE_OR_CUT_OFF, "stderr")
    if "disagree" in told[0]:
        assert worker.wait() == 1, worker.describe()
    ventilator.expect(SERVER_SAW_CURVE, "stderr")


# Slow by design: it waits out the script's fixed hint or repeat time.
@pytest.mark.slow
def test_a_worker_with_a_wrong_server_key_is_never_counted_and_says_why(
    tcp_pipeline: Pipeline, keys: Keys
) -> None:
    ventilator = tcp_pipeline.ventilator("--workers", "1", "--tasks", "3", *server_with_keys(keys))

    misled = tcp_pipeline.worker(
        "misled", "--curve-server", keys.public("impostor"), "--curve-secret", keys.secret("client")
    )

    misled.expect(
        r"has cut off every handshake for 2 s: is --curve-server the server's public key "
        r"file, and does the server use CURVE\? Trying again\.$",
        "stderr",
    )
    ventilator.expect(r"^Refused a connection: its CURVE handshake did not decrypt", "stderr")
    # The ventilator still waits for its one worker: the misled one was never counted.
    tcp_pipeline.worker("right", *client_with_keys(keys))
    assert ventilator.wait() == 0, ventilator.describe()
    assert tasks_per_worker(ventilator) == {"right": 3}
    assert "Task from" not in misled.stdout


# On the wire


class Recorder:
    """A TCP relay between a client and a server that keeps every byte it passes on."""

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.recorded = bytearray()
        self.lock = threading.Lock()
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.server_port))
            except OSError:
                # The server has gone (the test is ending): the client gets a closed connection.
                client.close()
                continue
            self.connections += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                with self.lock:
                    self.recorded += data
                sink.sendall(data)
            except OSError:
                return

    def holds(self, text: bytes) -> bool:
        with self.lock:
            return text in self.recorded

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def recorders() -> Iterator[list[Recorder]]:
    made: list[Recorder] = []
    yield made
    for recorder in made:
        recorder.close()


def recorder_to(recorders: list[Recorder], port: int) -> Recorder:
    recorder = Recorder(port)
    recorders.append(recorder)
    return recorder


@pytest.mark.parametrize("curve", [False, True], ids=["plaintext", "curve"])
def test_the_request_reply_wire_is_unreadable_with_curve(
    launch: Launcher, endpoints: Endpoints, keys: Keys, recorders: list[Recorder], curve: bool
) -> None:
    port = endpoints.tcp_port()
    server_args, client_args = (
        (server_with_keys(keys), client_with_keys(keys)) if curve else ((), ())
    )
    reply_server(launch, f"tcp://127.0.0.1:{port}", *server_args)
    recorder = recorder_to(recorders, port)

    client = launch.script("client_req_repl.py", "--connect", recorder.endpoint, *client_args)

    assert client.wait() == 0, client.describe()
    client.expect(r"^Received reply b'Hello world 1\*'$")
    assert recorder.holds(b"Hello world 1") is not curve
    assert recorder.holds(b"STOP") is not curve


@pytest.mark.parametrize("curve", [False, True], ids=["plaintext", "curve"])
def test_the_publish_subscribe_wire_is_unreadable_with_curve(
    launch: Launcher, endpoints: Endpoints, keys: Keys, recorders: list[Recorder], curve: bool
) -> None:
    port = endpoints.tcp_port()
    server_args, client_args = (
        (server_with_keys(keys), client_with_keys(keys)) if curve else ((), ())
    )
    publisher(launch, f"tcp://127.0.0.1:{port}", *server_args)
    recorder = recorder_to(recorders, port)

    subscriber = launch.script(
        "client_broadcast.py", "--connect", recorder.endpoint, "--count", "2", *client_args
    )

    assert subscriber.wait() == 0, subscriber.describe()
    subscriber.expect(r"^TIME")
    assert recorder.holds(b"TIME") is not curve


@pytest.mark.parametrize("curve", [False, True], ids=["plaintext", "curve"])
def test_the_pipeline_wire_is_unreadable_with_curve(
    launch: Launcher, endpoints: Endpoints, keys: Keys, recorders: list[Recorder], curve: bool
) -> None:
    tasks_port, results_port = endpoints.tcp_port(), endpoints.tcp_port()
    server_args, client_args = (
        (server_with_keys(keys), client_with_keys(keys)) if curve else ((), ())
    )
    ventilator = launch.script(
        "server_pipeline.py", "recorded-run", "--workers", "1", "--tasks", "5",
        "--bind", f"tcp://127.0.0.1:{tasks_port}", "--results", f"tcp://127.0.0.1:{results_port}",
        *server_args,
    )  # fmt: skip
    ventilator.expect(r"^Ventilator on ")
    tasks, results = recorder_to(recorders, tasks_port), recorder_to(recorders, results_port)

    launch.script(
        "client_pipeline.py", "worker-on-the-wire",
        "--connect", tasks.endpoint, "--results", results.endpoint, *client_args,
    )  # fmt: skip

    assert ventilator.wait() == 0, ventilator.describe()
    assert tasks_per_worker(ventilator) == {"worker-on-the-wire": 5}
    assert tasks.holds(b"recorded-run") is not curve
    assert results.holds(b"worker-on-the-wire") is not curve
    assert results.holds(b"recorded-run") is not curve


# Key files


@pytest.fixture
def bad_keys(tmp_path: Path, keys: Keys) -> dict[str, str]:
    """A key file of each wrong kind, by name."""
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_bytes(b"\x00\xffnot a certificate\n" * 10)
    short = tmp_path / "short.key_secret"
    short.write_text('curve\n    public-key = "abcde"\n    secret-key = "fghij"\n')
    public_key, _ = zmq.auth.load_certificate(keys.public("client"))
    _, secret_key = zmq.auth.load_certificate(keys.secret("stranger"))
    no_equals = tmp_path / "no-equals.key_secret"
    no_equals.write_text("curve\n    public-key\n")
    mixed = tmp_path / "mixed.key_secret"
    mixed.write_bytes(
        b'curve\n    public-key = "' + public_key + b'"\n    secret-key = "'
        + (secret_key or b"") + b'"\n'
    )  # fmt: skip
    return {
        "missing": str(tmp_path / "no-such.key_secret"),
        "a folder": str(tmp_path),
        "public only": keys.public("server"),
        "garbage": str(garbage),
        "wrong length": str(short),
        "not a pair": str(mixed),
        "a line without =": str(no_equals),
    }


BAD_KEY_LINES = {
    "missing": r": no such file\.$",
    "a folder": r": not a file\.$",
    "public only": r": it holds a public key only; pass NAME\.key_secret\.$",
    "garbage": r": it holds no public key\.$",
    "wrong length": r": a key in it is not 40 characters of Z85\.$",
    "not a pair": r": its public and secret keys are not a pair\.$",
    "a line without =": r": a key line in it has no '='\.$",
}

SCRIPTS_AND_SECRET_FLAGS = [
    ("server_req_repl.py", ()),
    ("server_broadcast.py", ()),
    ("server_pipeline.py", ()),
    ("client_req_repl.py", ("--curve-server", "SERVER")),
    ("client_broadcast.py", ("--curve-server", "SERVER")),
    ("client_pipeline.py", ("--curve-server", "SERVER")),
]


# Every kind on one server and one client; every script with one kind: the key-reading helpers
# are the same in all six, which tests/test_cli.py checks.
BAD_KEY_CASES = [
    *(
        (script, extra, kind)
        for script, extra in [SCRIPTS_AND_SECRET_FLAGS[0], SCRIPTS_AND_SECRET_FLAGS[5]]
        for kind in BAD_KEY_LINES
    ),
    *((script, extra, "not a pair") for script, extra in SCRIPTS_AND_SECRET_FLAGS[1:5]),
]


@pytest.mark.parametrize("script,extra,kind", BAD_KEY_CASES)
def test_a_bad_secret_key_file_is_named_in_one_line_before_any_socket_opens(
    launch: Launcher,
    endpoints: Endpoints,
    keys: Keys,
    bad_keys: dict[str, str],
    script: str,
    extra: tuple[str, ...],
    kind: str,
) -> None:
    endpoint = endpoints.ipc("never")
    where = "--bind" if script.startswith("server") else "--connect"
    flags = [keys.public("server") if flag == "SERVER" else flag for flag in extra]
    process = launch.script(script, where, endpoint, *flags, "--curve-secret", bad_keys[kind])

    assert process.wait() == 1, process.describe()
    assert len(process.lines["stderr"]) == 1, process.describe()
    process.expect(rf"^Cannot use {bad_keys[kind]}{BAD_KEY_LINES[kind]}", "stderr")
    # No socket was opened: a server did not bind, a client did not say it waits.
    assert not Path(endpoint.removeprefix("ipc://")).exists()
    assert process.stdout == ""


@pytest.mark.parametrize(
    "script", ["client_req_repl.py", "client_broadcast.py", "client_pipeline.py"]
)
def test_a_bad_server_key_file_is_named_in_one_line(
    launch: Launcher, bad_keys: dict[str, str], script: str
) -> None:
    process = launch.script(script, "--curve-server", bad_keys["garbage"])

    assert process.wait() == 1, process.describe()
    process.expect(rf"^Cannot use {bad_keys['garbage']}: it holds no public key\.$", "stderr")
    assert process.stdout == ""


def test_a_secret_key_file_that_others_may_read_is_used_with_a_warning(
    launch: Launcher, endpoints: Endpoints, keys: Keys, tmp_path: Path
) -> None:
    endpoint = endpoints.ipc("reqrep")
    leaky = tmp_path / "leaky.key_secret"
    shutil.copy(keys.secret("server"), leaky)
    leaky.chmod(0o644)

    server = reply_server(launch, endpoint, "--curve-secret", str(leaky))

    server.expect(
        rf"^Warning: others may read {leaky}; keep it secret: chmod 600 {leaky}$", "stderr"
    )
    client = launch.script(
        "client_req_repl.py", "--connect", endpoint, "--curve-server", keys.public("server")
    )
    assert client.wait() == 0, client.describe()
    assert "Warning" not in client.stderr


def test_a_client_given_the_servers_secret_file_warns_that_it_should_stay_on_the_server(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    endpoint = endpoints.ipc("reqrep")
    reply_server(launch, endpoint, "--curve-secret", keys.secret("server"))

    client = launch.script(
        "client_req_repl.py", "--connect", endpoint, "--curve-server", keys.secret("server")
    )

    assert client.wait() == 0, client.describe()
    client.expect(r"holds the server's secret key, which should never leave the server", "stderr")


@pytest.mark.parametrize(
    "script,case",
    [
        ("server_req_repl.py", "not a folder"),
        ("server_req_repl.py", "no key file"),
        ("server_req_repl.py", "a broken key file"),
        ("server_broadcast.py", "a broken key file"),
        ("server_pipeline.py", "a broken key file"),
    ],
)
def test_an_allow_list_that_is_not_a_folder_of_key_files_is_refused(
    launch: Launcher, tmp_path: Path, keys: Keys, script: str, case: str
) -> None:
    folder = tmp_path / "allowed"
    if case == "not a folder":
        named, line = folder, r"not a folder\."
    else:
        folder.mkdir()
        named, line = folder, r"it holds no NAME\.key file, so no client could\."
    if case == "a broken key file":
        shutil.copy(keys.public("client"), folder / "client.key")
        (folder / "someone.key").write_text("not a key\n")
        named, line = folder / "someone.key", r"it holds no public key\."

    process = launch.script(
        script, "--curve-secret", keys.secret("server"), "--curve-clients", str(folder)
    )

    assert process.wait() == 1, process.describe()
    process.expect(rf"^Cannot use {named}: {line}$", "stderr")
    assert process.stdout == ""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to drop the capability that lets root read any file",
)
def test_an_unreadable_key_file_is_named_in_one_line(
    launch: Launcher, tmp_path: Path, keys: Keys
) -> None:
    locked = tmp_path / "locked.key_secret"
    shutil.copy(keys.secret("server"), locked)
    locked.chmod(0)
    # Root reads any file through CAP_DAC_OVERRIDE: drop it, as for an ordinary user.
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]

    process = launch.script("server_req_repl.py", "--curve-secret", str(locked), prefix=drop)

    assert process.wait() == 1, process.describe()
    process.expect(rf"^Cannot read {locked}: Permission denied\.$", "stderr")


def test_a_pyzmq_without_curve_is_named_in_one_line(
    launch: Launcher, tmp_path: Path, keys: Keys
) -> None:
    # sitecustomize runs before the script: it makes this pyzmq say it has no CURVE.
    (tmp_path / "sitecustomize.py").write_text(
        "import zmq\n"
        "has = zmq.has\n"
        "zmq.has = lambda capability: capability != 'curve' and has(capability)\n"
    )
    env = {"PYTHONPATH": str(tmp_path)}

    for script, flags in [
        ("server_req_repl.py", ["--curve-secret", keys.secret("server")]),
        ("client_pipeline.py", ["--curve-server", keys.public("server")]),
    ]:
        process = launch.script(script, *flags, env=env)
        assert process.wait() == 1, process.describe()
        process.expect(r": this pyzmq was built without CURVE\.$", "stderr")


@pytest.mark.parametrize(
    "script,flag,needs",
    [
        ("server_req_repl.py", "--curve-clients", "--curve-secret"),
        ("client_req_repl.py", "--curve-secret", "--curve-server"),
        ("client_pipeline.py", "--curve-secret", "--curve-server"),
    ],
)
def test_a_curve_flag_without_its_partner_is_a_usage_error(
    launch: Launcher, keys: Keys, script: str, flag: str, needs: str
) -> None:
    process = launch.script(script, flag, str(keys.folder))

    assert process.wait() == 2, process.describe()
    process.expect(rf"error: {flag} needs {needs}$", "stderr")


def test_keys_made_by_the_readmes_command_work(tmp_path: Path) -> None:
    """The README's one command for key files, as written there."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "create_certificates(" in line)
    # The same command, with this environment's Python instead of one that uv would make.
    command = command.replace("uv run --with pyzmq python", shlex.quote(sys.executable))
    subprocess.run(
        ["sh", "-c", command],
        cwd=tmp_path,
        check=True,
        timeout=WAIT,
    )
    assert sorted(path.name for path in (tmp_path / "keys").iterdir()) == [
        "client.key", "client.key_secret", "server.key", "server.key_secret",
    ]  # fmt: skip


REFUSAL_LINE = r"^Refused (a|\d+ more) connections?"


def be_refused(
    context: zmq.Context[zmq.Socket[bytes]], keys: Keys, endpoint: str, times: int
) -> None:
    """Be refused `times` times by the server at `endpoint`, as a bare client with a wrong server
    key: libzmq connects again after each refusal, about ten times a second."""
    client = context.socket(zmq.REQ)
    client.curve_serverkey, _ = zmq.auth.load_certificate(keys.public("impostor"))
    client.curve_publickey, client.curve_secretkey = zmq.curve_keypair()
    monitor = client.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    client.connect(endpoint)
    for _ in range(times):
        wait_for_event(monitor, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    client.close(linger=0)


def refusals_in(line: str) -> int:
    """How many refused connections a line of the server's stderr reports."""
    match = re.match(REFUSAL_LINE, line)
    if match is None:
        return 0
    return 1 if match[1] == "a" else int(match[1].split()[0])


# Slow by design: it waits out the script's fixed hint or repeat time.
@pytest.mark.slow
def test_a_client_refused_again_and_again_fills_one_line_a_second_and_every_refusal_is_counted(
    launch: Launcher, endpoints: Endpoints, keys: Keys, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    endpoint = endpoints.tcp()
    server = reply_server(launch, endpoint, *server_with_keys(keys))
    refused = 12
    be_refused(context, keys, endpoint, refused)

    counted = 0
    while counted < refused:
        counted += refusals_in(server.expect(REFUSAL_LINE, "stderr")[0])
    # One more may have been on its way when the client closed.
    assert counted <= refused + 1, server.describe()
    assert len(server.lines["stderr"]) <= refused / 2, server.describe()


@pytest.fixture
def handshake_cutter() -> Iterator[str]:
    """A TCP endpoint that accepts each connection and closes it at once, as a server that
    refuses every handshake looks to a client that cannot tell why."""
    listener = socket.create_server(("127.0.0.1", 0))

    def cut() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connection.close()

    threading.Thread(target=cut, daemon=True).start()
    yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.mark.parametrize(
    "script,line",
    [
        (
            "client_req_repl.py",
            r"^No reply from \S+ within 1 s: the server cut off every handshake",
        ),
        ("client_broadcast.py", r"^No message from \S+ within 1 s: it cut off every handshake"),
    ],
)
def test_a_plaintext_client_whose_every_handshake_is_cut_off_suggests_curve(
    launch: Launcher, handshake_cutter: str, script: str, line: str
) -> None:
    client = launch.script(script, "--connect", handshake_cutter, "--timeout", "1")

    assert client.wait() == 1, client.describe()
    client.expect(
        line + r"\. If it uses CURVE, pass --curve-server with its public key file\.$", "stderr"
    )


# A mismatch that only one side can see, made certain: a raw peer offers the other mechanism
# and never hangs up first, so the script always reads what it offered.


def offer_and_wait_for_hang_up(
    connection: socket.socket, mechanism: bytes, as_server: bool
) -> None:
    """Send a whole ZMTP greeting offering `mechanism`, then read until the other end hangs up."""
    connection.settimeout(WAIT)
    connection.sendall(zmtp_greeting(mechanism, as_server))
    with contextlib.suppress(ConnectionResetError):
        while connection.recv(4096):
            pass


CLIENTS = ["client_req_repl.py", "client_broadcast.py", "client_pipeline.py"]
SERVERS = ["server_req_repl.py", "server_broadcast.py", "server_pipeline.py"]


def client_of(script: str, endpoint: str, endpoints: Endpoints) -> tuple[str, ...]:
    """The arguments that point a client script at `endpoint`, waiting as long as it takes."""
    if script == "client_pipeline.py":
        return ("--connect", endpoint, "--results", endpoints.tcp())
    return ("--connect", endpoint, "--timeout", NEVER)


def server_on(script: str, endpoint: str, endpoints: Endpoints) -> tuple[str, ...]:
    """The arguments that bind a server script on `endpoint`."""
    if script == "server_pipeline.py":
        return ("--bind", endpoint, "--results", endpoints.tcp())
    return ("--bind", endpoint)


@pytest.mark.parametrize("script", CLIENTS)
@pytest.mark.parametrize("curve", [False, True], ids=["plaintext", "curve"])
def test_a_client_that_reads_another_mechanism_in_the_servers_greeting_says_they_disagree(
    launch: Launcher, endpoints: Endpoints, keys: Keys, script: str, curve: bool
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(WAIT)
        endpoint = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        client = launch.script(
            script,
            *client_of(script, endpoint, endpoints),
            *(client_with_keys(keys) if curve else ()),
        )
        connection, _ = listener.accept()
        with connection:
            # A CURVE server says it is the server; NULL has no such role.
            offer_and_wait_for_hang_up(connection, b"NULL" if curve else b"CURVE", not curve)

    assert client.wait() == 1, client.describe()
    said = SERVER_HAS_NO_CURVE if curve else CLIENT_HAS_NO_CURVE
    client.expect(rf"^This client and the server at {re.escape(endpoint)} {said}", "stderr")
    assert "Traceback" not in client.stderr


@pytest.mark.parametrize("script", SERVERS)
@pytest.mark.parametrize("curve", [False, True], ids=["plaintext", "curve"])
def test_a_server_that_reads_another_mechanism_in_a_clients_greeting_refuses_it(
    launch: Launcher, endpoints: Endpoints, keys: Keys, script: str, curve: bool
) -> None:
    port = endpoints.tcp_port()
    server = launch.script(
        script, *server_on(script, f"tcp://127.0.0.1:{port}", endpoints),
        *(server_with_keys(keys) if curve else ()),
    )  # fmt: skip
    server.expect(r"^(Request-reply server|Publishing|Ventilator) on ")

    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as connection:
        offer_and_wait_for_hang_up(connection, b"NULL" if curve else b"CURVE", False)

    if curve:
        server.expect(r"^Refused a connection: the client does not use CURVE \(it needs ", "stderr")
    else:
        server.expect(
            r"^Refused a connection: the client uses CURVE and this server does not ", "stderr"
        )
    assert "Traceback" not in server.stderr


@pytest.mark.parametrize("folder", ["*", "gl[1]"])
def test_an_allow_list_whose_name_looks_like_a_pattern_lets_in_only_its_keys(
    launch: Launcher, endpoints: Endpoints, keys: Keys, tmp_path: Path, folder: str
) -> None:
    # pyzmq's own folder reader takes "*" to mean any client, and globs the folder's name.
    (tmp_path / folder).mkdir()
    shutil.copy(keys.public("client"), tmp_path / folder / "client.key")
    endpoint = endpoints.tcp()
    server = launch.script(
        "server_req_repl.py", "--bind", endpoint,
        "--curve-secret", keys.secret("server"), "--curve-clients", folder,
        prefix=["env", "-C", str(tmp_path)],
    )  # fmt: skip
    server.expect(
        rf"^CURVE: encrypted; only clients with a public key file in {re.escape(folder)} "
    )

    stranger = launch.script(
        "client_req_repl.py", "--connect", endpoint, "--timeout", NEVER,
        *client_with_keys(keys, "stranger"),
    )  # fmt: skip
    assert stranger.wait() == 1, stranger.describe()
    stranger.expect(REFUSED_KEY, "stderr")
    client = launch.script("client_req_repl.py", "--connect", endpoint, *client_with_keys(keys))
    assert client.wait() == 0, client.describe()


def test_refusals_not_yet_printed_are_counted_at_exit(
    launch: Launcher, endpoints: Endpoints, keys: Keys, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    endpoint = endpoints.tcp()
    server = reply_server(launch, endpoint, *server_with_keys(keys))
    refused = 6
    be_refused(context, keys, endpoint, refused)

    server.signal(signal.SIGINT)

    assert server.wait() == 130, server.describe()
    counted = sum(refusals_in(line) for line in server.lines["stderr"])
    # One more may have been on its way when the client closed.
    assert refused <= counted <= refused + 1, server.describe()
