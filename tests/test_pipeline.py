"""Pipeline: server_pipeline.py (ventilator and sink) and client_pipeline.py (worker)."""

from __future__ import annotations

import re
import socket

from conftest import Endpoints, Launcher, Pipeline, tasks_per_worker


def test_three_workers_share_the_tasks_and_the_sink_collects_every_result(
    pipeline: Pipeline,
) -> None:
    ventilator = pipeline.ventilator("--tasks", "30")
    ventilator.expect(r"^Waiting for 3 workers to connect\.$")

    workers = [pipeline.worker(name) for name in ("alpha", "beta", "gamma")]

    assert ventilator.wait() == 0, ventilator.describe()
    ventilator.expect(r"^Sent 30 tasks, \d+ ms of work in all\.$")
    ventilator.expect(r"^All 30 results in\.$")
    assert tasks_per_worker(ventilator) == {"alpha": 10, "beta": 10, "gamma": 10}
    ventilator.expect(r"^Total simulated work: \d+\.\d\d s$")
    ventilator.expect(r"^Elapsed: \d+\.\d\d s \(ideal with 3 workers: \d+\.\d\d s\)$")
    # Each worker printed its ten tasks; wait for the lines, which may still be on their way.
    for worker in workers:
        for _ in range(10):
            worker.expect(r"^Task from ventilator-[0-9a-f]{6}: \d+ ms$")


def test_shares_differ_by_at_most_one_when_tasks_do_not_divide(pipeline: Pipeline) -> None:
    ventilator = pipeline.ventilator("--tasks", "11")
    for name in ("alpha", "beta", "gamma"):
        pipeline.worker(name)

    assert ventilator.wait() == 0, ventilator.describe()
    assert sorted(tasks_per_worker(ventilator).values()) == [3, 4, 4]


def test_ventilator_sends_nothing_until_all_workers_are_connected(pipeline: Pipeline) -> None:
    ventilator = pipeline.ventilator("--workers", "2", "--tasks", "20")
    pipeline.worker("early")
    ventilator.expect(r"^Workers connected: 1 of 2$")

    pipeline.worker("late")

    ventilator.expect(r"^Workers connected: 2 of 2$")
    assert ventilator.wait() == 0, ventilator.describe()
    # The post's ventilator sends as soon as one worker is there, and that worker gets all 20.
    assert tasks_per_worker(ventilator) == {"early": 10, "late": 10}


def test_a_tcp_connection_without_a_zeromq_handshake_is_not_a_worker(
    launch: Launcher, endpoints: Endpoints
) -> None:
    pipeline = Pipeline(launch, endpoints.tcp(), endpoints.ipc("results"))
    port = int(pipeline.tasks.rsplit(":", 1)[1])
    ventilator = pipeline.ventilator("--workers", "2", "--tasks", "20")
    # Plain TCP peers: one that closes at once, one that sends garbage, one that stays silent.
    with socket.create_connection(("127.0.0.1", port)):
        pass
    with socket.create_connection(("127.0.0.1", port)) as garbage:
        garbage.sendall(b"GET / HTTP/1.0\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port)):
        pipeline.worker("first")
        ventilator.expect(r"^Workers connected: 1 of 2$")
        pipeline.worker("second")

        assert ventilator.wait() == 0, ventilator.describe()
    assert tasks_per_worker(ventilator) == {"first": 10, "second": 10}


def test_tasks_are_pickled_name_and_workload_tuples(launch: Launcher, pipeline: Pipeline) -> None:
    ventilator = pipeline.ventilator("--workers", "1", "--tasks", "50", "--timeout", "1")
    # A bare PULL that checks every task's type and range, then reports how many it saw.
    bare_worker = launch.python(
        "import pickle, re, sys, zmq\n"
        "receiver = zmq.Context().socket(zmq.PULL)\n"
        "receiver.connect(sys.argv[1])\n"
        "for _ in range(50):\n"
        "    frames = receiver.recv_multipart()\n"
        "    name, workload = pickle.loads(frames[0])\n"
        "    assert len(frames) == 1 and type(workload) is int\n"
        "    assert re.fullmatch('ventilator-[0-9a-f]{6}', name), name\n"
        "    assert 1 <= workload <= 100, workload\n"
        "print('50 valid tasks')\n",
        pipeline.tasks,
    )

    assert bare_worker.wait() == 0, bare_worker.describe()
    bare_worker.expect("^50 valid tasks$")
    # The bare worker sends no results: the sink says so instead of waiting for ever.
    assert ventilator.wait() == 1, ventilator.describe()


def test_ventilator_name_is_the_first_argument(pipeline: Pipeline) -> None:
    ventilator = pipeline.ventilator("batch-7", "--workers", "1", "--tasks", "3")
    worker = pipeline.worker("solo")

    assert ventilator.wait() == 0, ventilator.describe()
    worker.expect(r"^Task from batch-7: \d+ ms$")


def test_worker_pushes_its_name_and_the_workload_to_the_sink(
    launch: Launcher, pipeline: Pipeline
) -> None:
    # Bare ventilator and sink around our worker: three known tasks in, three results out.
    bare_ends = launch.python(
        "import pickle, sys, zmq\n"
        "context = zmq.Context()\n"
        "sink = context.socket(zmq.PULL)\n"
        "sink.bind(sys.argv[2])\n"
        "ventilator = context.socket(zmq.PUSH)\n"
        "ventilator.bind(sys.argv[1])\n"
        "for workload in (5, 1, 30):\n"
        "    ventilator.send(pickle.dumps(('bare', workload)))\n"
        "for _ in range(3):\n"
        "    print(pickle.loads(sink.recv()))\n",
        pipeline.tasks,
        pipeline.results,
    )
    pipeline.worker("solo")

    assert bare_ends.wait() == 0, bare_ends.describe()
    assert bare_ends.lines["stdout"] == [
        "('solo', 'bare', 5)",
        "('solo', 'bare', 1)",
        "('solo', 'bare', 30)",
    ]


def test_worker_default_name_is_host_and_pid(pipeline: Pipeline) -> None:
    worker = pipeline.worker()

    match = re.match(r"^Worker (\S+): tasks from ", worker.lines["stdout"][0])
    assert match, worker.describe()
    assert match[1].endswith(f"-{worker.popen.pid}")
