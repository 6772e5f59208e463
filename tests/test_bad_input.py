"""Bad input: one line on stderr naming what was wrong, then the next valid message is handled."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import socket
from pathlib import Path

import pytest
import zmq

from conftest import (
    WAIT,
    Endpoints,
    Launcher,
    Pipeline,
    Process,
    publish_until,
    receive,
    tasks_per_worker,
    wait_for_event,
    zmtp_frame,
    zmtp_handshake,
)

Context = zmq.Context[zmq.Socket[bytes]]


class RunsACommand:
    """Unpickling this calls os.system: what a hostile peer sends to a plain pickle.loads."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def malformed(marker: Path) -> dict[str, list[bytes]]:
    """Messages that are no task and no result, by what is wrong with each; `marker` must not
    exist afterwards."""
    valid = pickle.dumps(("peer", 5, 1))
    return {
        "not a pickle": [b"hello, not a pickle"],
        "empty": [b""],
        "truncated pickle": [valid[:-3]],
        "calls os.system": [pickle.dumps(RunsACommand(f"touch {marker}"))],
        "calls a global": [pickle.dumps(("peer", Path("/etc"), 1))],
        "a list": [pickle.dumps(["peer", 5, 1])],
    }


def bad_tasks(marker: Path) -> dict[str, list[bytes]]:
    """Messages a worker must refuse, by what is wrong with each."""
    return {
        **malformed(marker),
        "a valid task, twice in one message": [pickle.dumps(("peer", 5, 1))] * 2,
        "a 4-tuple": [pickle.dumps(("peer", 5, 1, 1))],
        "a 1-tuple": [pickle.dumps(("peer",))],
        "a negative workload": [pickle.dumps(("peer", -5, 1))],
        "a huge workload": [pickle.dumps(("peer", 10**9, 1))],
        "a float workload": [pickle.dumps(("peer", 5.5, 1))],
        "a bool workload": [pickle.dumps(("peer", True, 1))],
        "a name that is not a string": [pickle.dumps((42, 5, 1))],
        "a task id that is not a number": [pickle.dumps(("peer", 5, "1"))],
        "the post's task with a float workload": [pickle.dumps(("peer", 5.5))],
    }


def bad_results(marker: Path, run_name: str, workload: int) -> dict[str, list[bytes]]:
    """Messages a sink must refuse, by what is wrong with each: well-formed but for one thing,
    each would otherwise answer the run's task 1."""
    return {
        **malformed(marker),
        "a valid result, twice in one message": [pickle.dumps(("w", run_name, workload, 1))] * 2,
        "the post's worker's 3-tuple": [pickle.dumps(("w", run_name, workload))],
        "a 5-tuple": [pickle.dumps(("w", run_name, workload, 1, 1))],
        "a worker name that is not a string": [pickle.dumps((42, run_name, workload, 1))],
        "a run name that is not a string": [pickle.dumps(("w", 42, workload, 1))],
        "a bool task id": [pickle.dumps(("w", run_name, workload, True))],
        "a task id that is not a number": [pickle.dumps(("w", run_name, workload, "1"))],
        "a float workload": [pickle.dumps(("w", run_name, workload + 0.5, 1))],
        # Plain data that costs whoever prints it: a repr that recurses 1,500 deep, or one that
        # is 2**30 names long from 300 bytes.
        "a workload nested 1,500 deep": [deeply_nested_result(run_name, 1500)],
        "a workload of shared tuples": [pickle.dumps(("w", run_name, shared_value(30), 1))],
    }


def deeply_nested_result(run_name: str, depth: int) -> bytes:
    """A pickled ("w", run_name, ((((...)))), 1), written opcode by opcode: pickle.dumps would
    recurse as deep as the tuples."""
    name = run_name.encode()
    return (
        b"\x80\x02(" + b"X\x01\x00\x00\x00w" + b"X" + len(name).to_bytes(4, "little") + name
        + b"(" * depth + b"t" * depth + b"K\x01t."
    )  # fmt: skip


def expect_one_line_each(process: Process, prefix: str, count: int) -> None:
    for _ in range(count):
        process.expect(f"^{prefix}", stream="stderr")
    assert len(process.lines["stderr"]) == count, process.describe()
    assert "Traceback" not in process.stderr


class OnlyWorker:
    """A ventilator started for one task, and that task, taken by the test playing the worker."""

    def __init__(self, pipeline: Pipeline, context: Context) -> None:
        self.ventilator = pipeline.ventilator("--workers", "1", "--tasks", "1")
        self.tasks = context.socket(zmq.PULL)
        self.tasks.connect(pipeline.tasks)
        self.run_name, self.workload, self.task_id = pickle.loads(receive(self.tasks)[0])
        assert self.task_id == 1

    def result(self, worker_name: str) -> bytes:
        return pickle.dumps((worker_name, self.run_name, self.workload, self.task_id))


def test_worker_refuses_bad_tasks_and_handles_the_next_valid_one(
    pipeline: Pipeline, context: Context, tmp_path: Path
) -> None:
    tasks, results = pipeline.play_ventilator_and_sink(context)
    worker = pipeline.worker("w")
    marker = tmp_path / "pwned"
    bad = bad_tasks(marker)

    for frames in bad.values():
        tasks.send_multipart(frames)
    tasks.send(pickle.dumps(("bare", 3, 7)))

    assert pickle.loads(receive(results)[0]) == ("w", "bare", 3, 7)
    worker.expect(r"^Task from 'bare': 3 ms$")
    expect_one_line_each(worker, "Ignored a task: ", len(bad))
    assert not marker.exists()
    assert worker.popen.poll() is None


def test_sink_refuses_bad_results_and_counts_the_next_valid_one(
    pipeline: Pipeline, context: Context, tmp_path: Path
) -> None:
    only = OnlyWorker(pipeline, context)
    ventilator = only.ventilator
    results = context.socket(zmq.PUSH)
    results.connect(pipeline.results)
    marker = tmp_path / "pwned"
    bad = bad_results(marker, only.run_name, only.workload)

    for frames in bad.values():
        results.send_multipart(frames)
    results.send(only.result("tester"))

    assert ventilator.wait() == 0, ventilator.describe()
    ventilator.expect(r"^Result 1/1 from 'tester': task 1, ")
    ventilator.expect(r"^  'tester': 1 tasks$")
    expect_one_line_each(ventilator, "Ignored a result: ", len(bad))
    assert not marker.exists()


def test_reply_server_disconnects_an_oversized_request_and_serves_the_others(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    endpoint = endpoints.ipc("reqrep")
    server = launch.reply_server(endpoint)
    well_behaved = context.socket(zmq.REQ)
    well_behaved.connect(endpoint)
    greedy = context.socket(zmq.REQ)
    greedy_monitor = greedy.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    greedy.connect(endpoint)

    greedy.send(b"x" * 100_000)
    wait_for_event(greedy_monitor, zmq.EVENT_DISCONNECTED)
    well_behaved.send(b"small")

    assert receive(well_behaved) == [b"small*"]
    server.expect(r"^Received b'small'$")
    assert "xxxx" not in server.stdout
    assert greedy.poll(0) == 0


def test_sink_disconnects_an_oversized_result_and_takes_the_others(
    pipeline: Pipeline, context: Context
) -> None:
    only = OnlyWorker(pipeline, context)
    ventilator = only.ventilator
    greedy = context.socket(zmq.PUSH)
    greedy_monitor = greedy.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    greedy.connect(pipeline.results)
    well_behaved = context.socket(zmq.PUSH)
    well_behaved.connect(pipeline.results)

    greedy.send(pickle.dumps(("greedy", 5, "x" * 100_000)))
    wait_for_event(greedy_monitor, zmq.EVENT_DISCONNECTED)
    well_behaved.send(only.result("tester"))

    assert ventilator.wait() == 0, ventilator.describe()
    ventilator.expect(r"^  'tester': 1 tasks$")
    assert "greedy" not in ventilator.stdout + ventilator.stderr


@pytest.mark.parametrize(
    ("request_bytes", "printed"),
    [(b"\xff\xfe\x00", r"b'\xff\xfe\x00'"), (b"", "b''")],
    ids=["not-utf8", "empty"],
)
def test_reply_server_answers_any_bytes(
    launch: Launcher, endpoints: Endpoints, context: Context, request_bytes: bytes, printed: str
) -> None:
    endpoint = endpoints.ipc("reqrep")
    server = launch.reply_server(endpoint)
    requester = context.socket(zmq.REQ)
    requester.connect(endpoint)

    requester.send(request_bytes)

    assert receive(requester) == [request_bytes + b"*"]
    server.expect(f"^Received {re.escape(printed)}$")
    requester.send(b"next")
    assert receive(requester) == [b"next*"]


def test_reply_server_answers_a_multipart_request_with_an_error(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    endpoint = endpoints.ipc("reqrep")
    server = launch.reply_server(endpoint)
    requester = context.socket(zmq.REQ)
    requester.connect(endpoint)

    requester.send_multipart([b"two", b"frames"])

    [reply] = receive(requester)
    assert reply.startswith(b"ERROR")
    server.expect(r"^Ignored a request of 2 frames", stream="stderr")
    requester.send(b"next")
    assert receive(requester) == [b"next*"]


def test_a_request_of_many_empty_frames_is_counted_without_holding_them(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    endpoint = endpoints.ipc("reqrep")
    server = launch.reply_server(endpoint)
    before = server.peak_memory_bytes()
    requester = context.socket(zmq.REQ)
    requester.connect(endpoint)

    # A few bytes each on the wire; a Python object each, some 200 bytes, if the server kept them.
    frames = 150_000
    requester.send_multipart([b""] * frames)

    [reply] = receive(requester)
    assert reply.startswith(b"ERROR")
    server.expect(rf"^Ignored a request of {frames} frames: expected 1\.$", stream="stderr")
    # libzmq queues them (about 64 bytes each) before the server reads any; a list of them would
    # add some 30 MiB more.
    assert server.peak_memory_bytes() - before < 20 * 2**20
    requester.send(b"next")
    assert receive(requester) == [b"next*"]


def test_subscriber_prints_bytes_that_are_not_utf8(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    publisher = context.socket(zmq.PUB)
    publisher.bind(endpoints.ipc("pubsub"))
    subscriber = launch.script(
        "client_broadcast.py", "--connect", endpoints.ipc("pubsub"), "--count", "2"
    )
    subscriber.expect("^Waiting for 2 messages")

    publish_until(
        publisher, lambda: subscriber.popen.poll() is not None, [b"TIME\xff\xfe caf\xc3\xa9"]
    )

    assert subscriber.wait() == 0, subscriber.describe()
    assert subscriber.lines["stdout"][1:] == [r"TIME\xff\xfe café"] * 2
    assert "Traceback" not in subscriber.stderr


def shared_value(depth: int) -> object:
    """Tuples whose repr would be 2**depth names long: each holds the one before it twice, and
    pickle stores each once."""
    value: object = "x"
    for _ in range(depth):
        value = (value, value)
    return value


def shared_tuples(depth: int) -> bytes:
    """A pickle of about 100 bytes whose repr would be 2**depth names long."""
    return pickle.dumps(shared_value(depth))


# Messages that cost a careless unpickler or formatter gigabytes or minutes, as (name, message).
COSTLY = [
    ("shared tuples", shared_tuples(40)),
    # LONG_BINPUT with memo index 2**31: the C unpickler allocates and zeroes the memo up to it.
    ("huge memo index", b"\x80\x02K\x01r\x00\x00\x00\x80."),
    ("huge memo index after None", b"\x80\x02Nr\x00\x00\x00\x08."),
    # BINUNICODE claiming 4 GiB of text in a 12-byte message.
    ("huge string length", b"\x80\x04X\xff\xff\xff\xffabc."),
    # A load key that is a newline: an error message quoting it would print two lines.
    ("newline load key", b"\n\n\n"),
]
# Names that are valid strings but must not reach a terminal raw, as (name, how it must print).
UNPRINTABLE_NAMES = [
    ("\ud800", r"\ud800"),
    ("x\nAll 2 results in.", r"x\nAll 2 results in."),
    ("\x1b[2J\x1b[31mred\r", r"\x1b[2J\x1b[31mred\r"),
]


def assert_printable(process: Process) -> None:
    """Every line the process wrote is printable text: no escape codes, no stray line breaks."""
    for line in process.all_lines():
        assert line.isprintable(), repr(line)
    assert "Traceback" not in process.stderr


def test_worker_survives_costly_and_unprintable_tasks_in_bounded_memory_and_time(
    pipeline: Pipeline, context: Context
) -> None:
    tasks, results = pipeline.play_ventilator_and_sink(context)
    # A terminal that cannot show every character: the worker must still not crash on printing.
    worker = pipeline.worker("w", env={"PYTHONIOENCODING": "ascii:strict"})
    idle_memory, idle_cpu = worker.peak_memory_bytes(), worker.cpu_seconds()

    for _, message in COSTLY:
        tasks.send(message)
    for task_id, (name, _) in enumerate(UNPRINTABLE_NAMES, start=1):
        tasks.send(pickle.dumps((name, 1, task_id)))
    tasks.send(pickle.dumps(("bare", 3)))

    answered = [pickle.loads(receive(results)[0]) for _ in range(len(UNPRINTABLE_NAMES) + 1)]
    assert answered == [
        ("w", name, 1, task_id) for task_id, (name, _) in enumerate(UNPRINTABLE_NAMES, start=1)
    ] + [("w", "bare", 3)]
    for _, shown in UNPRINTABLE_NAMES:
        worker.expect(f"^Task from '{re.escape(shown)}': 1 ms$")
    worker.expect(r"^Task from 'bare': 3 ms$")
    expect_one_line_each(worker, "Ignored a task: ", len(COSTLY))
    assert_printable(worker)
    assert worker.peak_memory_bytes() - idle_memory < 50 * 2**20
    # The shared tuples took 28 s of CPU and 2 GiB through repr, the memo index 2 GiB.
    assert worker.cpu_seconds() - idle_cpu < 2.0


def test_sink_survives_costly_results_and_prints_names_escaped(
    pipeline: Pipeline, context: Context
) -> None:
    only = OnlyWorker(pipeline, context)
    ventilator = only.ventilator
    idle_memory, idle_cpu = ventilator.peak_memory_bytes(), ventilator.cpu_seconds()
    results = context.socket(zmq.PUSH)
    results.connect(pipeline.results)

    for _, message in COSTLY:
        results.send(message)
    results.send(pickle.dumps(("x" * 201, only.run_name, only.workload, only.task_id)))
    expect_one_line_each(ventilator, "Ignored a result: ", len(COSTLY) + 1)
    assert "a worker name of 201 characters: at most 200" in ventilator.stderr
    assert ventilator.peak_memory_bytes() - idle_memory < 50 * 2**20
    assert ventilator.cpu_seconds() - idle_cpu < 2.0
    results.send(only.result("\ud800\nAll 2 results in.\x1b[2J"))

    assert ventilator.wait() == 0, ventilator.describe()
    shown = re.escape(r"'\ud800\nAll 2 results in.\x1b[2J'")
    ventilator.expect(rf"^Result 1/1 from {shown}: task 1, \d+ ms$")
    ventilator.expect(rf"^  {shown}: 1 tasks$")
    assert "All 2 results in." not in ventilator.lines["stdout"]
    assert_printable(ventilator)


def test_the_ventilator_drops_a_peer_that_sends_to_its_task_socket(
    launch: Launcher, endpoints: Endpoints
) -> None:
    pipeline = Pipeline(launch, endpoints.tcp(), endpoints.ipc("results"))
    port = int(pipeline.tasks.rsplit(":", 1)[1])
    # The run may start once the hostile peer has gone, before the worker has even started: the
    # wait for results must outlast that start.
    ventilator = pipeline.ventilator("--workers", "1", "--tasks", "3", "--timeout", str(WAIT))
    ventilator.expect(r"^Waiting for 1 worker to connect\.$")
    idle_memory = ventilator.peak_memory_bytes()

    # A PULL peer, as far as the handshake goes, that then sends 100 MB to the PUSH socket. Its
    # first frame comes with the handshake: it is dropped before a task could be dealt to it.
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as hostile:
        # Dropped before it could send it all, and then reset: what is wanted.
        with contextlib.suppress(OSError):
            zmtp_handshake(hostile, b"PULL", then=zmtp_frame(b"x" * 100_000_000))
        with contextlib.suppress(ConnectionResetError):
            while hostile.recv(65536):
                pass

    assert ventilator.peak_memory_bytes() - idle_memory < 50 * 2**20
    pipeline.worker("w")
    assert ventilator.wait() == 0, ventilator.describe()
    assert tasks_per_worker(ventilator) == {"w": 3}


def test_a_subscriber_given_a_message_of_many_frames_prints_its_start_only(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    # An XPUB is a PUB that also hands over each subscription: the test sends once it has come,
    # and only as often as it means to. Sent again and again, the messages would pile up in the
    # subscriber, or the second would end it before its memory was read.
    publisher = context.socket(zmq.XPUB)
    publisher.bind(endpoints.ipc("pubsub"))
    subscriber = launch.script(
        "client_broadcast.py", "--connect", endpoints.ipc("pubsub"), "--count", "2"
    )
    subscriber.expect("^Waiting for 2 messages")
    idle_memory, idle_cpu = subscriber.peak_memory_bytes(), subscriber.cpu_seconds()
    assert receive(publisher) == [b"\x01TIME"]

    # 16 MiB in a thousand frames, each under the cap: decoded and escaped whole, 150 MiB.
    frames = [b"TIME"] + [b"\xff" * 16_000] * 1000
    publisher.send_multipart(frames)
    subscriber.expect(r"^TIME \\xff")
    assert subscriber.peak_memory_bytes() - idle_memory < 50 * 2**20
    assert subscriber.cpu_seconds() - idle_cpu < 1.0
    publisher.send_multipart(frames)
    assert subscriber.wait() == 0, subscriber.describe()
    assert all(len(line) < 400 for line in subscriber.lines["stdout"])


def test_a_worker_dropped_by_a_wrong_sink_connects_again_to_the_right_one(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    pipeline = Pipeline(launch, endpoints.ipc("tasks"), endpoints.tcp())
    # A request-reply socket on the results port by mistake: it refuses a PUSH peer in the
    # handshake, and libzmq never tries that connection again by itself.
    wrong = context.socket(zmq.REP)
    monitor = wrong.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    wrong.bind(pipeline.results)
    worker = pipeline.worker("w")
    wait_for_event(monitor, zmq.EVENT_DISCONNECTED)
    monitor.close()
    wrong.close()

    # A result queued as the wrong connection was dropped goes with it: the reliable
    # ventilator's retries cover that, soon with a short timeout, and count each result once.
    ventilator = launch.script(
        "reliable/server_pipeline.py", "--bind", pipeline.tasks, "--results", pipeline.results,
        "--workers", "1", "--tasks", "3", "--timeout", "0.2", "--retries", "10",
    )  # fmt: skip

    assert ventilator.wait() == 0, ventilator.describe() + worker.describe()
    assert tasks_per_worker(ventilator) == {"w": 3}
