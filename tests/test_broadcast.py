"""Publish-subscribe: server_broadcast.py and client_broadcast.py, as a user runs them."""

from __future__ import annotations

import re

from conftest import Endpoints, Launcher

READY = r"^Publishing on "
ASCTIME = r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}"


def test_subscriber_prints_the_count_of_time_messages_and_exits(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.ipc("pubsub")
    publisher = launch.script("server_broadcast.py", "--bind", endpoint, "--interval", "0.05")
    publisher.expect(READY)

    subscriber = launch.script("client_broadcast.py", "--connect", endpoint, "--count", "3")

    subscriber.expect(r"^Waiting for 3 messages starting with 'TIME' from ipc://")
    assert subscriber.wait() == 0, subscriber.describe()
    messages = subscriber.lines["stdout"][1:]
    assert len(messages) == 3
    for message in messages:
        assert re.fullmatch("TIME" + ASCTIME, message), message
    publisher.expect(r"^Sent TIME" + ASCTIME + "$")


def test_default_count_is_five_as_in_the_post(launch: Launcher, endpoints: Endpoints) -> None:
    endpoint = endpoints.ipc("pubsub")
    publisher = launch.script("server_broadcast.py", "--bind", endpoint, "--interval", "0.02")
    publisher.expect(READY)

    subscriber = launch.script("client_broadcast.py", "--connect", endpoint)

    assert subscriber.wait() == 0, subscriber.describe()
    assert len([line for line in subscriber.lines["stdout"] if line.startswith("TIME")]) == 5


def test_messages_are_single_frames_of_time_and_asctime(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.ipc("pubsub")
    publisher = launch.script("server_broadcast.py", "--bind", endpoint, "--interval", "0.05")
    publisher.expect(READY)

    # A bare SUB that prints each message's frames, so the wire format itself is checked.
    bare_subscriber = launch.python(
        "import sys, zmq\n"
        "subscriber = zmq.Context().socket(zmq.SUB)\n"
        "subscriber.connect(sys.argv[1])\n"
        "subscriber.subscribe(b'')\n"
        "for _ in range(3):\n"
        "    print(subscriber.recv_multipart())\n",
        endpoint,
    )

    assert bare_subscriber.wait() == 0, bare_subscriber.describe()
    assert len(bare_subscriber.lines["stdout"]) == 3
    for line in bare_subscriber.lines["stdout"]:
        assert re.fullmatch(r"\[b'TIME" + ASCTIME + r"'\]", line), line


def test_publisher_stops_after_count(launch: Launcher, endpoints: Endpoints) -> None:
    publisher = launch.script(
        "server_broadcast.py",
        "--bind",
        endpoints.ipc("pubsub"),
        "--interval",
        "0.01",
        "--count",
        "4",
    )

    assert publisher.wait() == 0, publisher.describe()
    assert len([line for line in publisher.lines["stdout"] if line.startswith("Sent TIME")]) == 4


def test_topic_filters_by_prefix(launch: Launcher, endpoints: Endpoints) -> None:
    endpoint = endpoints.ipc("pubsub")
    publisher = launch.script("server_broadcast.py", "--bind", endpoint, "--interval", "0.05")
    publisher.expect(READY)

    everything = launch.script(
        "client_broadcast.py", "--connect", endpoint, "--topic", "", "--count", "2"
    )
    nothing = launch.script(
        "client_broadcast.py", "--connect", endpoint, "--topic", "WEATHER", "--timeout", "1"
    )

    assert everything.wait() == 0, everything.describe()
    assert nothing.wait() == 1, nothing.describe()
    assert not [line for line in nothing.lines["stdout"] if line.startswith("TIME")]
    nothing.expect(r"^No message from ipc://\S+ within 1 s", stream="stderr")
