"""Publish-subscribe: server_broadcast.py and client_broadcast.py, as a user runs them."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
import zmq

from conftest import (
    WAIT,
    Endpoints,
    Launcher,
    load_script,
    next_event,
    publish_until,
    receive,
)

Context = zmq.Context[zmq.Socket[bytes]]

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
    # Ten messages come in half a second: enough for one to slip through a broken filter.
    nothing = launch.script(
        "client_broadcast.py", "--connect", endpoint, "--topic", "WEATHER", "--timeout", "0.5"
    )

    assert everything.wait() == 0, everything.describe()
    assert nothing.wait() == 1, nothing.describe()
    assert not [line for line in nothing.lines["stdout"] if line.startswith("TIME")]
    nothing.expect(r"^No message from ipc://\S+ within 0\.5 s", stream="stderr")


def test_an_empty_topic_receives_every_message(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    publisher = context.socket(zmq.PUB)
    publisher.bind(endpoints.ipc("pubsub"))
    subscriber = launch.script(
        "client_broadcast.py", "--connect", endpoints.ipc("pubsub"), "--topic", "", "--count", "2"
    )
    subscriber.expect(r"^Waiting for 2 messages starting with '' from ")

    publish_until(publisher, lambda: subscriber.popen.poll() is not None, [b"NEWS of the day"])

    assert subscriber.wait() == 0, subscriber.describe()
    assert subscriber.lines["stdout"][1:] == ["NEWS of the day"] * 2


def test_a_topic_that_is_not_utf8_is_subscribed_as_typed(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    publisher = context.socket(zmq.PUB)
    publisher.bind(endpoints.ipc("pubsub"))
    topic = os.fsdecode(b"T\xff")
    subscriber = launch.script(
        "client_broadcast.py",
        "--connect",
        endpoints.ipc("pubsub"),
        "--topic",
        topic,
        "--count",
        "1",
    )
    subscriber.expect(r"^Waiting for 1 messages starting with 'T\\udcff' from ")

    # The message that does not match goes first each time: it must never be printed.
    publish_until(
        publisher,
        lambda: subscriber.popen.poll() is not None,
        [b"T\xfe skipped"],
        [b"T\xff taken"],
    )

    assert subscriber.wait() == 0, subscriber.describe()
    assert subscriber.lines["stdout"][1:] == [r"T\xff taken"]
    assert subscriber.stderr == ""


def test_control_characters_from_the_network_never_reach_the_terminal(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    publisher = context.socket(zmq.PUB)
    publisher.bind(endpoints.ipc("pubsub"))
    subscriber = launch.script(
        "client_broadcast.py", "--connect", endpoints.ipc("pubsub"), "--count", "1"
    )
    subscriber.expect("^Waiting for 1 messages")

    publish_until(
        publisher,
        lambda: subscriber.popen.poll() is not None,
        [b"TIME\x1b[2J\r\nforged line\x07", b"x" * 500],
    )

    assert subscriber.wait() == 0, subscriber.describe()
    [line] = subscriber.lines["stdout"][1:]
    assert line.startswith(r"TIME\x1b[2J\r\nforged line\x07 xxx")
    assert line.endswith("x...") and len(line) < 400
    assert line.isprintable()


def test_a_subscriber_sent_an_oversized_message_connects_again(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    endpoint = endpoints.tcp()
    publisher = context.socket(zmq.PUB)
    publisher.bind(endpoint)
    subscriber = launch.script("client_broadcast.py", "--connect", endpoint, "--count", "1")
    subscriber.expect("^Waiting for 1 messages")

    deadline = time.monotonic() + WAIT
    while not subscriber.lines["stderr"] and time.monotonic() < deadline:
        publisher.send(b"TIME" + b"x" * 20_000)
        time.sleep(0.02)
    subscriber.expect(r"^Dropped tcp://\S+ for breaking the protocol", stream="stderr")
    publish_until(publisher, lambda: subscriber.popen.poll() is not None, [b"TIME small"])

    assert subscriber.wait() == 0, subscriber.describe()
    assert subscriber.lines["stdout"][1:] == ["TIME small"]


def test_an_unused_topic_is_not_blamed_on_a_missing_publisher(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.ipc("pubsub")
    launch.script("server_broadcast.py", "--bind", endpoint, "--interval", "0.05").expect(READY)

    subscriber = launch.script(
        "client_broadcast.py", "--connect", endpoint, "--topic", "NEWS", "--timeout", "1"
    )

    assert subscriber.wait() == 1, subscriber.describe()
    assert subscriber.lines["stderr"] == [
        f"No message from {endpoint} within 1 s: the publisher is up, but sent nothing "
        "starting with 'NEWS'."
    ]


def test_a_paused_publisher_does_not_send_the_messages_it_missed_in_a_burst(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    endpoint = endpoints.ipc("pubsub")
    publisher = launch.script("server_broadcast.py", "--bind", endpoint, "--interval", "0.05")
    publisher.expect(READY)
    subscriber = context.socket(zmq.SUB)
    subscriber.subscribe(b"")
    subscriber.connect(endpoint)
    receive(subscriber)

    # Like a laptop's lid closed for a second: twenty messages fall due while it is stopped.
    publisher.signal(signal.SIGSTOP)
    time.sleep(1.0)
    while subscriber.poll(0):
        subscriber.recv()
    publisher.signal(signal.SIGCONT)
    receive(subscriber)
    window_ends = time.monotonic() + 0.2
    more = 0
    while (left := window_ends - time.monotonic()) > 0 and subscriber.poll(round(left * 1000)):
        subscriber.recv()
        more += 1

    # Back on its schedule, it sends one at once and three more in those 0.2 s. Messages sent just
    # before the stop may still be on their way, and a slow look catches more: the bound leaves
    # room for that, and the test below pins the schedule exactly. A burst is all twenty at once.
    assert more <= 10, f"{more} more messages within 0.2 s of resuming"


class FakeClock:
    """Stands in for the time module: a sleep moves the clock on at once."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_after_a_pause_the_next_message_is_due_a_whole_interval_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publisher = load_script("server_broadcast.py")
    clock = FakeClock(now=100.0)
    monkeypatch.setattr(publisher, "time", clock)

    # On schedule: it sleeps until one interval after the last message.
    assert publisher.sleep_until_next(99.98, 0.05) == pytest.approx(100.03)
    assert clock.now == pytest.approx(100.03)

    # Stopped for a second, twenty messages fell due: not one of them is caught up on.
    clock.now = 101.03
    assert publisher.sleep_until_next(100.03, 0.05) == pytest.approx(101.08)
    assert clock.now == pytest.approx(101.08)


def kept_or_dropped(subscriber: zmq.Socket[bytes], monitor: zmq.Socket[bytes]) -> str:
    """Whether a SUB socket, subscribed last of all to TIME, gets a message ("kept") or is
    dropped ("dropped") first: the publisher reads a connection's subscriptions in order, so a
    message that matches the last one says it took them all."""
    poller = zmq.Poller()
    poller.register(subscriber, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    deadline = time.monotonic() + WAIT
    while (remaining := deadline - time.monotonic()) > 0:
        ready = dict(poller.poll(round(remaining * 1000)))
        if monitor in ready and next_event(monitor) == zmq.EVENT_DISCONNECTED:
            return "dropped"
        if subscriber in ready:
            return "kept"
    raise AssertionError(f"neither a message nor a disconnection within {WAIT:g} s")


def test_a_subscription_over_the_publishers_limit_drops_only_that_subscriber(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    endpoint = endpoints.tcp()
    publisher = launch.script("server_broadcast.py", "--bind", endpoint, "--interval", "0.05")
    publisher.expect(READY)
    outcomes: dict[int, str] = {}
    # Our subscriber refuses a topic over 4,000 bytes: one that long is kept, one over is not.
    for topic_bytes in (4_000, 4_100):
        bare = context.socket(zmq.SUB)
        monitor = bare.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        bare.connect(endpoint)
        bare.subscribe(b"T" * topic_bytes)
        bare.subscribe(b"TIME")
        outcomes[topic_bytes] = kept_or_dropped(bare, monitor)
    assert outcomes == {4_000: "kept", 4_100: "dropped"}

    subscriber = launch.script("client_broadcast.py", "--connect", endpoint, "--count", "2")

    assert subscriber.wait() == 0, subscriber.describe()
    assert publisher.popen.poll() is None


def test_our_subscriber_with_the_longest_topic_it_takes_receives_its_messages(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    # An XPUB is a PUB that also hands over each subscription: the whole topic must come.
    publisher = context.socket(zmq.XPUB)
    publisher.bind(endpoints.ipc("pubsub"))
    topic = "T" * 4_000
    subscriber = launch.script(
        "client_broadcast.py", "--connect", endpoints.ipc("pubsub"), "--topic", topic,
        "--count", "1",
    )  # fmt: skip
    assert receive(publisher) == [b"\x01" + topic.encode()]

    publisher.send(topic.encode() + b" news")

    assert subscriber.wait() == 0, subscriber.describe()
    # Printed cut to 300 characters, as every message is.
    assert subscriber.lines["stdout"][1:] == ["T" * 300 + "..."]
