"""secure/: each pair with CURVE. Encrypted, each server proven by its key, strangers refused,
and a refusal named on both sides by the key it refused."""

from __future__ import annotations

import os
import pickle
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
import zmq.auth

from conftest import (
    ROOT,
    WAIT,
    WORKER_READY,
    Endpoints,
    Launcher,
    Process,
    receive,
    tasks_per_worker,
    zmtp_greeting,
)

Context = zmq.Context[zmq.Socket[bytes]]

# Long enough that a client which only gave up at its timeout fails the test's wait.
NEVER = str(10 * WAIT)
SECURE_SERVERS = [
    "secure/server_req_repl.py",
    "secure/server_broadcast.py",
    "secure/server_pipeline.py",
]
SECURE_CLIENTS = [
    "secure/client_req_repl.py",
    "secure/client_broadcast.py",
    "secure/client_pipeline.py",
]


@dataclass
class Keys:
    """Key files as zmq.auth.create_certificates writes them: NAME.key and NAME.key_secret."""

    folder: Path

    def public(self, name: str) -> str:
        return str(self.folder / f"{name}.key")

    def secret(self, name: str) -> str:
        return str(self.folder / f"{name}.key_secret")

    def z85(self, name: str) -> str:
        """NAME's public key, as the scripts print it."""
        public_key, _ = zmq.auth.load_certificate(self.public(name))
        return public_key.decode()

    @property
    def allowed(self) -> str:
        """The servers' allow-list: the public key file of the client named "client" only."""
        return str(self.folder / "clients")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("server", "client", "stranger", "impostor"):
        zmq.auth.create_certificates(folder, name)
    (folder / "clients").mkdir()
    shutil.copy(folder / "client.key", folder / "clients" / "client.key")
    return Keys(folder)


def server_with_keys(keys: Keys) -> tuple[str, ...]:
    return ("--curve-secret", keys.secret("server"), "--curve-clients", keys.allowed)


def client_with_keys(keys: Keys, name: str = "client") -> tuple[str, ...]:
    return ("--curve-server", keys.public("server"), "--curve-secret", keys.secret(name))


def refused_line(endpoint_pattern: str, key: str) -> str:
    """The client's one line when the server's allow-list refuses its key."""
    return rf"^The server at ({endpoint_pattern}) refused our key {re.escape(key)}\.$"


def denied_line(key: str) -> str:
    """The server's line for the same refusal: pyzmq's authenticator log, which names the key."""
    return rf"^Refused a client: DENIED \(CURVE\) domain=\S* client_key=b'{re.escape(key)}'$"


def with_curve(socket: zmq.Socket[bytes], keys: Keys, name: str = "client") -> None:
    """Make a bare socket a CURVE client of our server, with NAME's key pair."""
    server_key, _ = zmq.auth.load_certificate(keys.public("server"))
    public_key, secret_key = zmq.auth.load_certificate(keys.secret(name))
    assert secret_key is not None
    socket.curve_serverkey = server_key
    socket.curve_publickey, socket.curve_secretkey = public_key, secret_key


def reply_server(
    launch: Launcher, endpoint: str, *args: str, script: str = "secure/server_req_repl.py"
) -> Process:
    server = launch.script(script, "--bind", endpoint, *args)
    server.expect(r"^Request-reply server on .*Waiting for requests")
    return server


def publisher(
    launch: Launcher, endpoint: str, *args: str, script: str = "secure/server_broadcast.py"
) -> Process:
    server = launch.script(script, "--bind", endpoint, "--interval", "0.05", *args)
    server.expect(r"^Publishing on ")
    return server


def ventilator(
    launch: Launcher,
    tasks: str,
    results: str,
    *args: str,
    script: str = "secure/server_pipeline.py",
) -> Process:
    server = launch.script(script, "--bind", tasks, "--results", results, *args)
    server.expect(r"^Ventilator on ")
    return server


def worker(
    launch: Launcher,
    tasks: str,
    results: str,
    *args: str,
    script: str = "secure/client_pipeline.py",
) -> Process:
    """A worker, once it says it waits for tasks (before any handshake)."""
    process = launch.script(script, *args, "--connect", tasks, "--results", results)
    process.expect(WORKER_READY)
    return process


def twin(script: str, curve: bool) -> str:
    """The secure/ twin of a top-level script, or the script itself as the plaintext control."""
    return f"secure/{script}" if curve else script


def bound(script: str, endpoints: Endpoints, name: str = "main") -> tuple[str, ...]:
    """The arguments that bind a server script on fresh ipc endpoints."""
    if script.endswith("server_pipeline.py"):
        return ("--bind", endpoints.ipc(name), "--results", endpoints.ipc(f"{name}-results"))
    return ("--bind", endpoints.ipc(name))


# With keys on both sides, each pair does what it does without them.


def test_request_reply_with_keys_on_both_sides_works_as_without(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    plain_endpoint, endpoint = endpoints.tcp(), endpoints.tcp()
    plain_server = reply_server(launch, plain_endpoint, script="server_req_repl.py")
    plain_client = launch.script("client_req_repl.py", "--connect", plain_endpoint, "one", "two")
    server = reply_server(launch, endpoint, *server_with_keys(keys))
    server.expect(rf"^CURVE: encrypted; clients allowed: {re.escape(keys.allowed)}\.$")

    client = launch.script(
        "secure/client_req_repl.py", "--connect", endpoint, "one", "two", *client_with_keys(keys)
    )

    assert client.wait() == 0, client.describe()
    assert server.wait() == 0, server.describe()
    assert plain_client.wait() == 0, plain_client.describe()
    assert plain_server.wait() == 0, plain_server.describe()
    assert client.lines == plain_client.lines
    assert "Received reply b'two*'" in client.lines["stdout"]
    # The same lines, but the endpoint and the one that says CURVE is on.
    without_curve = [line for line in server.lines["stdout"] if not line.startswith("CURVE: ")]
    assert "\n".join(without_curve) == plain_server.stdout.replace(plain_endpoint, endpoint)
    assert server.stderr == ""


def test_publish_subscribe_with_keys_on_both_sides_works_as_without(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    endpoint = endpoints.tcp()
    server = publisher(launch, endpoint, *server_with_keys(keys))

    subscriber = launch.script(
        "secure/client_broadcast.py", "--connect", endpoint, "--count", "3",
        *client_with_keys(keys),
    )  # fmt: skip

    assert subscriber.wait() == 0, subscriber.describe()
    assert subscriber.lines["stdout"][0] == (
        f"Waiting for 3 messages starting with 'TIME' from {endpoint}."
    )
    assert len(subscriber.lines["stdout"]) == 4, subscriber.describe()
    for line in subscriber.lines["stdout"][1:]:
        assert re.fullmatch(r"TIME\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}", line), line
    assert subscriber.stderr == ""
    assert server.stderr == ""


def test_pipeline_with_keys_on_both_sides_works_as_without(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    tasks, results = endpoints.tcp(), endpoints.tcp()
    server = ventilator(launch, tasks, results, "--workers", "2", "--tasks", "10",
                        *server_with_keys(keys))  # fmt: skip
    server.expect(rf"^CURVE: encrypted; workers allowed: {re.escape(keys.allowed)}\.$")

    workers = [
        worker(launch, tasks, results, name, *client_with_keys(keys)) for name in ("alpha", "beta")
    ]

    assert server.wait() == 0, server.describe()
    server.expect(r"^All 10 results in\.$")
    assert tasks_per_worker(server) == {"alpha": 5, "beta": 5}
    assert server.stderr == ""
    for process in workers:
        assert process.stdout.count("Task from ") == 5, process.describe()


def test_without_an_allow_list_a_client_with_a_key_made_for_the_run_gets_in(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    endpoint = endpoints.tcp()
    server = reply_server(launch, endpoint, "--curve-secret", keys.secret("server"))
    server.expect(r"^CURVE: encrypted; clients allowed: any with our key\.$")

    # No --curve-secret: the client makes a key pair for this run.
    client = launch.script(
        "secure/client_req_repl.py", "--connect", endpoint, "--curve-server", keys.public("server")
    )

    assert client.wait() == 0, client.describe()
    client.expect(r"^Received reply b'Hello world 1\*'$")
    assert server.wait() == 0, server.describe()


# A stranger is refused; both sides name its key (defect 7), and the client exits at once.


@pytest.mark.parametrize("pattern", ["request-reply", "publish-subscribe", "pipeline"])
def test_a_client_whose_key_is_not_allowed_exits_at_once_and_both_sides_name_its_key(
    launch: Launcher, endpoints: Endpoints, keys: Keys, pattern: str
) -> None:
    stranger = keys.z85("stranger")
    if pattern == "pipeline":
        tasks, results = endpoints.tcp(), endpoints.tcp()
        server = ventilator(launch, tasks, results, "--workers", "1", "--tasks", "4",
                            *server_with_keys(keys))  # fmt: skip
        client = worker(launch, tasks, results, "stranger", *client_with_keys(keys, "stranger"))
        said_to = f"{re.escape(tasks)}|{re.escape(results)}"
    else:
        endpoint = endpoints.tcp()
        if pattern == "request-reply":
            server = reply_server(launch, endpoint, *server_with_keys(keys))
            script = "secure/client_req_repl.py"
        else:
            server = publisher(launch, endpoint, *server_with_keys(keys))
            script = "secure/client_broadcast.py"
        client = launch.script(
            script, "--connect", endpoint, "--timeout", NEVER, *client_with_keys(keys, "stranger")
        )
        said_to = re.escape(endpoint)

    # A refused key is final: libzmq will not try again, so waiting would be for ever.
    assert client.wait() == 1, client.describe()
    assert len(client.lines["stderr"]) == 1, client.describe()
    client.expect(refused_line(said_to, stranger), "stderr")
    server.expect(denied_line(stranger), "stderr")
    assert not re.search(r"^(Received|TIME|Task from)", client.stdout, re.MULTILINE)
    assert not re.search(r"^(Received|Workers connected)", server.stdout, re.MULTILINE)
    if pattern == "pipeline":
        # It was never counted: the one allowed worker gets every task.
        worker(launch, tasks, results, "allowed", *client_with_keys(keys))
        assert server.wait() == 0, server.describe()
        assert tasks_per_worker(server) == {"allowed": 4}


def test_a_client_with_a_key_made_for_the_run_is_refused_by_an_allow_list_and_named(
    launch: Launcher, endpoints: Endpoints, keys: Keys
) -> None:
    endpoint = endpoints.tcp()
    server = reply_server(launch, endpoint, *server_with_keys(keys))

    client = launch.script(
        "secure/client_req_repl.py", "--connect", endpoint, "--timeout", NEVER,
        "--curve-server", keys.public("server"),
    )  # fmt: skip

    assert client.wait() == 1, client.describe()
    said = client.expect(
        rf"^The server at {re.escape(endpoint)} refused our key (\S{{40}})\.$", "stderr"
    )
    key = said[1]
    assert key not in {keys.z85(name) for name in ("server", "client", "stranger", "impostor")}
    server.expect(denied_line(key), "stderr")


# Each side of a mismatch, or a wrong server key, says something useful: at once, or at its
# timeout.


@pytest.mark.parametrize(
    "client_script,server_script,server_key",
    [
        ("client_req_repl.py", "secure/server_req_repl.py", "server"),
        ("secure/client_req_repl.py", "server_req_repl.py", "server"),
        ("secure/client_req_repl.py", "secure/server_req_repl.py", "impostor"),
    ],
    ids=["plaintext-client", "plaintext-server", "wrong-server-key"],
)
def test_a_request_client_cut_off_at_every_handshake_suggests_curve(
    launch: Launcher,
    endpoints: Endpoints,
    keys: Keys,
    client_script: str,
    server_script: str,
    server_key: str,
) -> None:
    endpoint = endpoints.tcp()
    secure_server = server_script.startswith("secure/")
    server = reply_server(
        launch, endpoint, *(server_with_keys(keys) if secure_server else ()), script=server_script
    )
    curve = ("--curve-server", keys.public(server_key), "--curve-secret", keys.secret("client"))

    client = launch.script(
        client_script, "--connect", endpoint, "--timeout", "1",
        *(curve if client_script.startswith("secure/") else ()),
    )  # fmt: skip

    assert client.wait() == 1, client.describe()
    # At once: libzmq does not try again after a handshake that failed.
    client.expect(
        rf"^No reply from {re.escape(endpoint)}: it cut off the handshake \(.*CURVE\?\)\.$",
        "stderr",
    )
    assert "Received" not in server.stdout


@pytest.mark.parametrize(
    "client_script,server_script,server_key",
    [
        ("client_broadcast.py", "secure/server_broadcast.py", "server"),
        ("secure/client_broadcast.py", "server_broadcast.py", "server"),
        ("secure/client_broadcast.py", "secure/server_broadcast.py", "impostor"),
    ],
    ids=["plaintext-client", "plaintext-server", "wrong-server-key"],
)
def test_a_subscriber_cut_off_at_every_handshake_suggests_curve(
    launch: Launcher,
    endpoints: Endpoints,
    keys: Keys,
    client_script: str,
    server_script: str,
    server_key: str,
) -> None:
    endpoint = endpoints.tcp()
    secure_server = server_script.startswith("secure/")
    publisher(
        launch, endpoint, *(server_with_keys(keys) if secure_server else ()), script=server_script
    )
    curve = ("--curve-server", keys.public(server_key), "--curve-secret", keys.secret("client"))

    subscriber = launch.script(
        client_script, "--connect", endpoint, "--timeout", "1",
        *(curve if client_script.startswith("secure/") else ()),
    )  # fmt: skip

    assert subscriber.wait() == 1, subscriber.describe()
    subscriber.expect(
        rf"^No message from {re.escape(endpoint)} within 1 s: it cut off every handshake \(.*"
        r"CURVE\?\)\.$",
        "stderr",
    )
    assert not re.search(r"^TIME", subscriber.stdout, re.MULTILINE)


@pytest.mark.parametrize(
    "client_script,server_script,server_key",
    [
        ("client_pipeline.py", "secure/server_pipeline.py", "server"),
        ("secure/client_pipeline.py", "server_pipeline.py", "server"),
        ("secure/client_pipeline.py", "secure/server_pipeline.py", "impostor"),
    ],
    ids=["plaintext-worker", "plaintext-ventilator", "wrong-server-key"],
)
def test_a_worker_cut_off_at_every_handshake_is_never_counted(
    launch: Launcher,
    endpoints: Endpoints,
    keys: Keys,
    client_script: str,
    server_script: str,
    server_key: str,
) -> None:
    tasks, results = endpoints.tcp(), endpoints.tcp()
    secure_server = server_script.startswith("secure/")
    server = ventilator(
        launch, tasks, results, "--workers", "1", "--tasks", "3",
        *(server_with_keys(keys) if secure_server else ()), script=server_script,
    )  # fmt: skip
    curve = ("--curve-server", keys.public(server_key), "--curve-secret", keys.secret("client"))
    misled = worker(
        launch, tasks, results, "misled",
        *(curve if client_script.startswith("secure/") else ()), script=client_script,
    )  # fmt: skip

    # The ventilator still waits for its one worker: the misled one, which tried first, was
    # never counted.
    right = worker(
        launch, tasks, results, "right",
        *(client_with_keys(keys) if secure_server else ()),
        script=server_script.replace("server_pipeline", "client_pipeline"),
    )  # fmt: skip

    assert server.wait() == 0, server.describe()
    assert tasks_per_worker(server) == {"right": 3}
    assert right.stdout.count("Task from") == 3
    assert "Task from" not in misled.stdout


# Which side reads the other's greeting first, and so learns of the mismatch, is a race: a raw
# peer that offers the other mechanism and never hangs up first makes it certain that the client
# does. What each client then says:
ANOTHER_MECHANISM_LINES = {
    "client_req_repl.py": r"^No reply from {endpoint}: it cut off the handshake \(.*CURVE\?\)\.$",
    "client_broadcast.py": (
        r"^No message from {endpoint} within 1 s: it cut off every handshake \(.*CURVE\?\)\.$"
    ),
    # A worker has no timeout: it says that it dropped the server, and tries again.
    "client_pipeline.py": r"^Dropped {endpoint} for breaking the protocol\.$",
}


@pytest.mark.parametrize("curve", [False, True], ids=["plaintext", "curve"])
@pytest.mark.parametrize("script", sorted(ANOTHER_MECHANISM_LINES))
def test_a_client_whose_server_offers_another_mechanism_says_so(
    launch: Launcher, endpoints: Endpoints, keys: Keys, script: str, curve: bool
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(WAIT)
        endpoint = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        waits = ("--results", endpoints.tcp()) if "pipeline" in script else ("--timeout", "1")
        client = launch.script(
            twin(script, curve), "--connect", endpoint, *waits,
            *(client_with_keys(keys) if curve else ()),
        )  # fmt: skip
        connection, _ = listener.accept()
        with connection:
            # A CURVE server says it is the server; NULL has no such role.
            connection.sendall(zmtp_greeting(b"NULL" if curve else b"CURVE", not curve))

            line = ANOTHER_MECHANISM_LINES[script].format(endpoint=re.escape(endpoint))
            client.expect(line, "stderr")
    assert "Traceback" not in client.stderr


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
            r"No reply from \S+: it cut off the handshake \(not REP\? CURVE\?\)\.",
        ),
        (
            "secure/client_req_repl.py",
            r"No reply from \S+: it cut off the handshake \(wrong key\? no CURVE\?\)\.",
        ),
        (
            "client_broadcast.py",
            r"No message from \S+ within 1 s: it cut off every handshake \(not a publisher\? "
            r"CURVE\?\)\.",
        ),
        (
            "secure/client_broadcast.py",
            r"No message from \S+ within 1 s: it cut off every handshake \(a wrong key\? no "
            r"CURVE\?\)\.",
        ),
    ],
)
def test_a_client_whose_every_handshake_is_cut_off_suggests_curve(
    launch: Launcher, keys: Keys, handshake_cutter: str, script: str, line: str
) -> None:
    curve = ("--curve-server", keys.public("server")) if script.startswith("secure/") else ()
    client = launch.script(script, "--connect", handshake_cutter, "--timeout", "1", *curve)

    assert client.wait() == 1, client.describe()
    assert re.fullmatch(line, client.lines["stderr"][-1]), client.describe()


# What CURVE does not cause: a health check is not blamed on it (defect 4), idle connections
# cannot lock out a client (defect 6), a second SIGTERM does not break the exit.


def health_check(port: int) -> None:
    """What a load balancer or a monitoring probe does: open a TCP connection and close it,
    sending nothing. Once at once, and once after the server has begun its greeting."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT):
        pass
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as probe:
        # The server's first bytes: it has accepted this connection and begun its handshake.
        assert probe.recv(1)


@pytest.mark.parametrize("script", ["server_req_repl.py", "secure/server_req_repl.py"])
def test_a_tcp_health_check_gets_no_line_from_a_request_server(
    launch: Launcher, endpoints: Endpoints, keys: Keys, context: Context, script: str
) -> None:
    port = endpoints.tcp_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    secure = script.startswith("secure/")
    server = reply_server(launch, endpoint, *(server_with_keys(keys) if secure else ()),
                          script=script)  # fmt: skip
    health_check(port)

    # A real client, after the checks: once it is answered, the server has seen them come and go.
    requester = context.socket(zmq.REQ)
    if secure:
        with_curve(requester, keys)
    requester.connect(endpoint)
    requester.send(b"STOP")

    assert receive(requester) == [b"STOP*"]
    assert server.wait() == 0, server.describe()
    assert server.stderr == ""


@pytest.mark.parametrize("script", ["server_broadcast.py", "secure/server_broadcast.py"])
def test_a_tcp_health_check_gets_no_line_from_a_publisher(
    launch: Launcher, endpoints: Endpoints, keys: Keys, context: Context, script: str
) -> None:
    port = endpoints.tcp_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    secure = script.startswith("secure/")
    server = publisher(launch, endpoint, *(server_with_keys(keys) if secure else ()),
                       script=script)  # fmt: skip
    health_check(port)

    subscriber = context.socket(zmq.SUB)
    if secure:
        with_curve(subscriber, keys)
    subscriber.subscribe(b"TIME")
    subscriber.connect(endpoint)
    assert receive(subscriber)[0].startswith(b"TIME")
    server.signal(signal.SIGINT)

    assert server.wait() == 130, server.describe()
    assert server.lines["stderr"] == ["Interrupted: shutting down."]


@pytest.mark.parametrize("script", ["server_pipeline.py", "secure/server_pipeline.py"])
def test_a_tcp_health_check_gets_no_line_from_a_ventilator_and_is_no_worker(
    launch: Launcher, endpoints: Endpoints, keys: Keys, context: Context, script: str
) -> None:
    tasks_port, results_port = endpoints.tcp_port(), endpoints.tcp_port()
    tasks, results = f"tcp://127.0.0.1:{tasks_port}", f"tcp://127.0.0.1:{results_port}"
    secure = script.startswith("secure/")
    server = ventilator(launch, tasks, results, "--workers", "1", "--tasks", "2",
                        *(server_with_keys(keys) if secure else ()), script=script)  # fmt: skip
    health_check(tasks_port)
    health_check(results_port)

    # A bare worker, after the checks; the run ends once it has answered both tasks.
    receiver, sender = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    for bare in (receiver, sender):
        if secure:
            with_curve(bare, keys)
    receiver.connect(tasks)
    sender.connect(results)
    for _ in range(2):
        run_name, workload_ms, task_id = pickle.loads(receive(receiver)[0])
        sender.send(pickle.dumps(("bare", run_name, workload_ms, task_id)))

    assert server.wait() == 0, server.describe()
    assert server.stderr == ""
    assert re.findall(r"^(?:Workers connected|A worker).*", server.stdout, re.MULTILINE) == [
        "Workers connected: 1 of 1"
    ]


# Each idle connection holds a file descriptor until the server closes it. ZMQ_HANDSHAKE_IVL
# closes those that have not finished their handshake within 3 s (libzmq's default is 30 s).
FILE_LIMIT = 256
WITH_FILE_LIMIT = (
    "import os, resource, sys; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FILE_LIMIT}, {FILE_LIMIT})); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


# Slow by design: the allowed client is let in only once the server drops the idle connections
# at its 3 s handshake timeout. The plain server sets it too: a stranger needs no key to do this.
@pytest.mark.slow
@pytest.mark.parametrize("script", ["secure/server_req_repl.py", "server_req_repl.py"])
def test_idle_connections_past_the_servers_file_limit_do_not_lock_out_an_allowed_client(
    launch: Launcher, endpoints: Endpoints, keys: Keys, script: str
) -> None:
    secure = script.startswith("secure/")
    port = endpoints.tcp_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    server = launch.script(
        script, "--bind", endpoint, *(server_with_keys(keys) if secure else ()),
        prefix=[sys.executable, "-c", WITH_FILE_LIMIT],
    )  # fmt: skip
    server.expect(r"^Request-reply server on ")
    descriptors = Path(f"/proc/{server.popen.pid}/fd")

    # A stranger's connections that never send a byte: more than the server may hold at once.
    idle = [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(300)]
    try:
        deadline = time.monotonic() + WAIT
        while (held := len(os.listdir(descriptors))) < FILE_LIMIT - 2:
            assert time.monotonic() < deadline, f"the server holds only {held} descriptors"
            time.sleep(0.01)

        # Without the handshake timeout, it would get in after 30 s, when libzmq's runs out.
        client = launch.script(
            "secure/client_req_repl.py" if secure else "client_req_repl.py",
            "--connect", endpoint, "--timeout", "15", *(client_with_keys(keys) if secure else ()),
        )  # fmt: skip

        assert client.wait() == 0, client.describe()
        client.expect(r"^Received reply b'Hello world 1\*'$")
        assert server.wait() == 0, server.describe()
    finally:
        for connection in idle:
            connection.close()


# Each second SIGTERM lands at a different moment of the first one's shutdown: the
# authenticator's thread stopping, the context ending, the interpreter exiting.
GAPS_BETWEEN_SIGNALS = (0.001, 0.003, 0.01)


@pytest.mark.parametrize("script", SECURE_SERVERS)
def test_two_sigterms_in_a_row_end_a_server_with_an_allow_list_at_once(
    launch: Launcher, endpoints: Endpoints, keys: Keys, script: str
) -> None:
    servers = [
        (
            launch.script(script, *bound(script, endpoints, f"run-{gap}"), *server_with_keys(keys)),
            gap,
        )
        for gap in GAPS_BETWEEN_SIGNALS
    ]
    for server, _ in servers:
        server.expect(r"^CURVE: encrypted")

    for server, gap in servers:
        server.signal(signal.SIGTERM)
        sent = time.monotonic()
        time.sleep(gap)  # Not a wait for anything: the second signal's moment.
        server.signal(signal.SIGTERM)

        assert server.wait() == 130, server.describe()
        assert time.monotonic() - sent < 1.0, server.describe()
        assert server.lines["stderr"] == ["Interrupted: shutting down."], server.describe()


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
    reply_server(launch, f"tcp://127.0.0.1:{port}", *(server_with_keys(keys) if curve else ()),
                 script=twin("server_req_repl.py", curve))  # fmt: skip
    recorder = recorder_to(recorders, port)

    client = launch.script(
        twin("client_req_repl.py", curve), "--connect", recorder.endpoint,
        *(client_with_keys(keys) if curve else ()),
    )  # fmt: skip

    assert client.wait() == 0, client.describe()
    client.expect(r"^Received reply b'Hello world 1\*'$")
    assert recorder.holds(b"Hello world 1") is not curve
    assert recorder.holds(b"STOP") is not curve


@pytest.mark.parametrize("curve", [False, True], ids=["plaintext", "curve"])
def test_the_publish_subscribe_wire_is_unreadable_with_curve(
    launch: Launcher, endpoints: Endpoints, keys: Keys, recorders: list[Recorder], curve: bool
) -> None:
    port = endpoints.tcp_port()
    publisher(launch, f"tcp://127.0.0.1:{port}", *(server_with_keys(keys) if curve else ()),
              script=twin("server_broadcast.py", curve))  # fmt: skip
    recorder = recorder_to(recorders, port)

    subscriber = launch.script(
        twin("client_broadcast.py", curve), "--connect", recorder.endpoint, "--count", "2",
        *(client_with_keys(keys) if curve else ()),
    )  # fmt: skip

    assert subscriber.wait() == 0, subscriber.describe()
    subscriber.expect(r"^TIME")
    assert recorder.holds(b"TIME") is not curve


@pytest.mark.parametrize("curve", [False, True], ids=["plaintext", "curve"])
def test_the_pipeline_wire_is_unreadable_with_curve(
    launch: Launcher, endpoints: Endpoints, keys: Keys, recorders: list[Recorder], curve: bool
) -> None:
    tasks_port, results_port = endpoints.tcp_port(), endpoints.tcp_port()
    server = ventilator(
        launch, f"tcp://127.0.0.1:{tasks_port}", f"tcp://127.0.0.1:{results_port}",
        "recorded-run", "--workers", "1", "--tasks", "5",
        *(server_with_keys(keys) if curve else ()), script=twin("server_pipeline.py", curve),
    )  # fmt: skip
    tasks, results = recorder_to(recorders, tasks_port), recorder_to(recorders, results_port)

    worker(
        launch, tasks.endpoint, results.endpoint, "worker-on-the-wire",
        *(client_with_keys(keys) if curve else ()), script=twin("client_pipeline.py", curve),
    )  # fmt: skip

    assert server.wait() == 0, server.describe()
    assert tasks_per_worker(server) == {"worker-on-the-wire": 5}
    assert tasks.holds(b"recorded-run") is not curve
    assert results.holds(b"worker-on-the-wire") is not curve
    assert results.holds(b"recorded-run") is not curve


# Key files


def test_keys_made_by_the_readmes_command_work(
    launch: Launcher, endpoints: Endpoints, tmp_path: Path
) -> None:
    # secure/README.md's command, as a reader runs it in a fresh clone.
    readme = (ROOT / "secure" / "README.md").read_text().splitlines()
    command = next(line for line in readme if "create_certificates('keys'" in line)
    # The same command, with this environment's Python instead of one that uv would make.
    command = command.replace("uv run --with pyzmq python", shlex.quote(sys.executable))
    subprocess.run(["sh", "-c", command], cwd=tmp_path, check=True, timeout=WAIT)
    assert sorted(path.name for path in (tmp_path / "keys").iterdir()) == [
        "client.key", "client.key_secret", "clients", "server.key", "server.key_secret",
    ]  # fmt: skip

    # Run from that folder, the scripts find the server's key files where they look by default.
    endpoint = endpoints.tcp()
    in_folder = ["env", "-C", str(tmp_path)]
    server = launch.script(
        "secure/server_req_repl.py", "--bind", endpoint, "--curve-clients", "keys/clients",
        prefix=in_folder,
    )  # fmt: skip
    server.expect(r"^CURVE: encrypted; clients allowed: keys/clients\.$")
    client = launch.script(
        "secure/client_req_repl.py", "--connect", endpoint,
        "--curve-secret", "keys/client.key_secret", prefix=in_folder,
    )  # fmt: skip

    assert client.wait() == 0, client.describe()
    client.expect(r"^Received reply b'Hello world 1\*'$")
    assert server.wait() == 0, server.describe()


@pytest.fixture
def bad_keys(tmp_path: Path, keys: Keys) -> dict[str, str]:
    """A key file of each wrong kind, by name."""
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_bytes(b"\x00\xffnot a certificate\n" * 10)
    short = tmp_path / "short.key_secret"
    short.write_text('curve\n    public-key = "abcde"\n    secret-key = "fghij"\n')
    not_z85 = tmp_path / "not-z85.key_secret"
    not_z85.write_text(f'curve\n    public-key = "{"," * 40}"\n    secret-key = "{"," * 40}"\n')
    no_equals = tmp_path / "no-equals.key_secret"
    no_equals.write_text("curve\n    public-key\n")
    return {
        "missing": str(tmp_path / "no-such.key_secret"),
        "a folder": str(tmp_path),
        "public only": keys.public("server"),
        "garbage": str(garbage),
        "wrong length": str(short),
        "not Z85": str(not_z85),
        "a line without =": str(no_equals),
    }


# pyzmq's own words name the file; where the script speaks, its words are pinned.
BAD_KEY_LINES = {
    "missing": "",
    "a folder": "",
    "public only": " holds no secret key$",
    "garbage": "",
    "wrong length": " holds no secret key$",
    "not Z85": " holds no secret key$",
    "a line without =": " holds no secret key$",
}

# Every kind on one server and one client; one kind on each of the others: load_key is the same
# in all six.
BAD_KEY_CASES = [
    *(
        (script, kind)
        for script in ("secure/server_req_repl.py", "secure/client_pipeline.py")
        for kind in BAD_KEY_LINES
    ),
    *(
        (script, "wrong length")
        for script in [*SECURE_SERVERS[1:], *SECURE_CLIENTS[:2]]
    ),
]  # fmt: skip


@pytest.mark.parametrize("script,kind", BAD_KEY_CASES)
def test_a_bad_secret_key_file_is_named_in_one_line_before_any_socket_opens(
    launch: Launcher,
    endpoints: Endpoints,
    keys: Keys,
    bad_keys: dict[str, str],
    script: str,
    kind: str,
) -> None:
    server = "server_" in script
    if server:
        where: tuple[str, ...] = bound(script, endpoints)
    else:
        where = ("--connect", endpoints.ipc("main"), "--curve-server", keys.public("server"))
        if "pipeline" in script:
            where += ("--results", endpoints.ipc("results"))
    process = launch.script(script, *where, "--curve-secret", bad_keys[kind])

    assert process.wait() == 1, process.describe()
    assert len(process.lines["stderr"]) == 1, process.describe()
    path = re.escape(bad_keys[kind])
    process.expect(rf"^Cannot use the keys: .*{path}'?{BAD_KEY_LINES[kind]}", "stderr")
    # No socket was opened: a server did not bind, a client did not say it waits.
    assert not any(endpoints.folder.iterdir()), list(endpoints.folder.iterdir())
    assert process.stdout == ""


@pytest.mark.parametrize("script", SECURE_CLIENTS)
@pytest.mark.parametrize("kind", ["garbage", "wrong length", "missing"])
def test_a_bad_server_key_file_is_named_in_one_line(
    launch: Launcher, bad_keys: dict[str, str], script: str, kind: str
) -> None:
    process = launch.script(script, "--curve-server", bad_keys[kind])

    assert process.wait() == 1, process.describe()
    assert len(process.lines["stderr"]) == 1, process.describe()
    ends = " holds no public key$" if kind == "wrong length" else ""
    process.expect(rf"^Cannot use the keys: .*{re.escape(bad_keys[kind])}{ends}", "stderr")
    assert process.stdout == ""


@pytest.mark.parametrize("script", SECURE_SERVERS)
@pytest.mark.parametrize("case", ["no such folder", "a file", "a bad key file in it"])
def test_a_bad_allow_list_is_named_in_one_line_before_any_socket_opens(
    launch: Launcher, endpoints: Endpoints, tmp_path: Path, keys: Keys, script: str, case: str
) -> None:
    folder = tmp_path / "clients"
    named = folder
    if case == "a file":
        folder.write_text("not a folder\n")
    elif case == "a bad key file in it":
        folder.mkdir()
        shutil.copy(keys.public("client"), folder / "client.key")
        named = folder / "someone.key"
        named.write_text("not a key\n")

    process = launch.script(
        script, *bound(script, endpoints),
        "--curve-secret", keys.secret("server"), "--curve-clients", str(folder),
    )  # fmt: skip

    assert process.wait() == 1, process.describe()
    assert len(process.lines["stderr"]) == 1, process.describe()
    process.expect(rf"^Cannot use the keys: .*{re.escape(str(named))}$", "stderr")
    assert not any(endpoints.folder.iterdir()), list(endpoints.folder.iterdir())
    assert process.stdout == ""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to drop the capability that lets root read any file",
)
def test_an_unreadable_key_file_is_named_in_one_line(
    launch: Launcher, endpoints: Endpoints, tmp_path: Path, keys: Keys
) -> None:
    locked = tmp_path / "locked.key_secret"
    shutil.copy(keys.secret("server"), locked)
    locked.chmod(0)
    # Root reads any file through CAP_DAC_OVERRIDE: drop it, as for an ordinary user.
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]

    process = launch.script(
        "secure/server_req_repl.py", "--bind", endpoints.ipc("main"),
        "--curve-secret", str(locked), prefix=drop,
    )  # fmt: skip

    assert process.wait() == 1, process.describe()
    assert len(process.lines["stderr"]) == 1, process.describe()
    process.expect(rf"^Cannot use the keys: .*Permission denied: '{re.escape(str(locked))}'$",
                   "stderr")  # fmt: skip
