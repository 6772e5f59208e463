"""The post's own snippets (tests/post_peers) paired with our scripts, in both directions."""

from __future__ import annotations

import re

import pytest

from conftest import Endpoints, Launcher, Pipeline


def test_post_client_against_our_server(launch: Launcher, endpoints: Endpoints) -> None:
    endpoint = endpoints.ipc("reqrep")
    server = launch.reply_server(endpoint)

    post_client = launch.post_peer("client_req_repl.py", endpoint)

    assert post_client.wait() == 0, post_client.describe()
    assert post_client.lines["stdout"] == ["b'Hello world 1*'"]
    # The post's client falls off its end right after sending STOP; STOP still arrives.
    assert server.wait() == 0, server.describe()
    server.expect(r"^Received b'STOP'$")


def test_our_client_against_post_server(launch: Launcher, endpoints: Endpoints) -> None:
    endpoint = endpoints.ipc("reqrep")
    post_server = launch.post_peer("server_req_repl.py", endpoint)

    client = launch.script("client_req_repl.py", "--connect", endpoint)

    assert client.wait() == 0, client.describe()
    client.expect(r"^Received reply b'Hello world 1\*'$")
    # The post's server ends on STOP without replying: the closed connection confirms it.
    client.expect(r"^Sent STOP: the server closed the connection\.$")
    assert post_server.wait() == 0, post_server.describe()
    assert post_server.lines["stdout"] == ["b'Hello world 1*'", "b'STOP*'"]


def test_post_subscriber_against_our_publisher(launch: Launcher, endpoints: Endpoints) -> None:
    endpoint = endpoints.ipc("pubsub")
    publisher = launch.script("server_broadcast.py", "--bind", endpoint, "--interval", "0.02")
    publisher.expect(r"^Publishing on ")

    post_subscriber = launch.post_peer("client_broadcast.py", endpoint)

    assert post_subscriber.wait() == 0, post_subscriber.describe()
    assert len(post_subscriber.lines["stdout"]) == 5
    for line in post_subscriber.lines["stdout"]:
        assert re.fullmatch(r"b'TIME\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}'", line), line


def test_our_subscriber_against_post_publisher(launch: Launcher, endpoints: Endpoints) -> None:
    endpoint = endpoints.ipc("pubsub")
    launch.post_peer("server_broadcast.py", endpoint, "0.02")

    subscriber = launch.script("client_broadcast.py", "--connect", endpoint, "--count", "3")

    assert subscriber.wait() == 0, subscriber.describe()
    assert len([line for line in subscriber.lines["stdout"] if line.startswith("TIME")]) == 3


def test_post_worker_against_our_ventilator(launch: Launcher, pipeline: Pipeline) -> None:
    # No result ever comes: the timeout is how long the run takes.
    ventilator = pipeline.ventilator("--workers", "1", "--timeout", "0.5")

    post_worker = launch.post_peer("client_pipeline.py", "post-worker", pipeline.tasks)

    # Each task is printed as it comes: (name, workload, task id), the ids 1 to 100.
    task_ids = [
        int(post_worker.expect(r"^\('ventilator-[0-9a-f]{6}', \d+, (\d+)\)$")[1])
        for _ in range(100)
    ]
    assert sorted(task_ids) == list(range(1, 101))
    # The post's worker sends no results, and the sink says so rather than waiting for ever.
    assert ventilator.wait() == 1, ventilator.describe()
    ventilator.expect(r"100 of 100 results missing", stream="stderr")


# The post's ventilator sends 100 tasks of 1 to 100 ms, all to the first worker that connects,
# which does them in turn: about 5 s that no option shortens. Left out of the default run; .ci/run
# runs it with the other slow tests (uv run pytest -m slow).
@pytest.mark.slow
def test_our_worker_against_post_ventilator(launch: Launcher, pipeline: Pipeline) -> None:
    worker = pipeline.worker()

    launch.post_peer("server_pipeline.py", "post", pipeline.tasks)

    for _ in range(100):
        worker.expect(r"^Task from 'post': \d+ ms$")
