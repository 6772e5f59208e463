"""Pipeline: server_pipeline.py (ventilator and sink) and client_pipeline.py (worker)."""

from __future__ import annotations

import contextlib
import pickle
import re
import signal
import socket
import time
from collections.abc import Iterator

import zmq

from conftest import WAIT, Endpoints, Launcher, Pipeline, receive, tasks_per_worker

Context = zmq.Context[zmq.Socket[bytes]]


def test_three_workers_share_the_tasks_and_the_sink_collects_every_result(
    pipeline: Pipeline,
) -> None:
    ventilator = pipeline.ventilator("--tasks", "30")
    ventilator.expect(r"^Waiting for 3 workers to connect\.$")

    workers = pipeline.workers("alpha", "beta", "gamma")

    assert ventilator.wait() == 0, ventilator.describe()
    ventilator.expect(r"^Sent 30 tasks, \d+ ms of work in all\.$")
    # Each result names its worker and the task it answers: every task once, in any order.
    answered = [
        ventilator.expect(r"^Result \d+/30 from '(?:alpha|beta|gamma)': task (\d+), \d+ ms$")[1]
        for _ in range(30)
    ]
    assert sorted(map(int, answered)) == list(range(1, 31))
    ventilator.expect(r"^All 30 results in\.$")
    assert tasks_per_worker(ventilator) == {"alpha": 10, "beta": 10, "gamma": 10}
    ventilator.expect(r"^Total simulated work: \d+\.\d\d s$")
    ventilator.expect(r"^Elapsed: \d+\.\d\d s \(ideal, 3 workers of one speed: \d+\.\d\d s\)$")
    # Each worker printed its ten tasks; wait for the lines, which may still be on their way.
    for worker in workers:
        for _ in range(10):
            worker.expect(r"^Task from 'ventilator-[0-9a-f]{6}': \d+ ms$")


def test_shares_differ_by_at_most_one_when_tasks_do_not_divide(pipeline: Pipeline) -> None:
    ventilator = pipeline.ventilator("--tasks", "11")
    pipeline.workers("alpha", "beta", "gamma")

    assert ventilator.wait() == 0, ventilator.describe()
    assert sorted(tasks_per_worker(ventilator).values()) == [3, 4, 4]


def test_ventilator_sends_nothing_until_all_workers_are_connected(pipeline: Pipeline) -> None:
    ventilator = pipeline.ventilator("--workers", "2", "--tasks", "10")
    pipeline.worker("early")
    ventilator.expect(r"^Workers connected: 1 of 2$")

    pipeline.worker("late")

    ventilator.expect(r"^Workers connected: 2 of 2$")
    assert ventilator.wait() == 0, ventilator.describe()
    # The post's ventilator sends as soon as one worker is there, and that worker gets all 10.
    assert tasks_per_worker(ventilator) == {"early": 5, "late": 5}


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


def test_the_connection_credited_as_a_worker_is_the_one_that_finished_its_handshake(
    launch: Launcher, endpoints: Endpoints
) -> None:
    pipeline = Pipeline(launch, endpoints.tcp(), endpoints.ipc("results"))
    port = int(pipeline.tasks.rsplit(":", 1)[1])
    ventilator = pipeline.ventilator("--workers", "2", "--tasks", "20")
    ventilator.expect(r"^Waiting for 2 workers to connect\.$")
    # A plain TCP peer accepted first, which stays silent, then a worker: libzmq does not say
    # which connection finished its handshake, and it was the worker's, the one accepted last.
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT):
        pipeline.worker("first")
        ventilator.expect(r"^Workers connected: 1 of 2$")
    # The silent peer has gone: had it been taken for the worker, the count would drop to 0.

    pipeline.worker("second")

    assert ventilator.expect(r"^Workers connected: [02] of 2$")[0] == "Workers connected: 2 of 2"
    assert ventilator.wait() == 0, ventilator.describe()
    assert tasks_per_worker(ventilator) == {"first": 10, "second": 10}


def test_tasks_are_pickled_name_workload_and_task_id_tuples(
    pipeline: Pipeline, context: Context
) -> None:
    # No result ever comes: the timeout is how long the run takes.
    ventilator = pipeline.ventilator("--workers", "1", "--tasks", "50", "--timeout", "0.5")
    # A bare PULL, the one worker, that checks every task's type and range.
    tasks, _ = pipeline.play_worker(context)

    task_ids = []
    for _ in range(50):
        [task] = receive(tasks)
        name, workload, task_id = pickle.loads(task)
        assert re.fullmatch("ventilator-[0-9a-f]{6}", name), name
        assert type(workload) is int and 1 <= workload <= 100, workload
        assert type(task_id) is int, task_id
        task_ids.append(task_id)
    assert sorted(task_ids) == list(range(1, 51))
    # The bare worker sends no results: the sink says so instead of waiting for ever.
    assert ventilator.wait() == 1, ventilator.describe()
    ventilator.expect(r"^No result for 0\.5 s: 50 of 50 results missing\.$", stream="stderr")


def test_ventilator_name_is_the_first_argument(pipeline: Pipeline) -> None:
    ventilator = pipeline.ventilator("batch-7", "--workers", "1", "--tasks", "3")
    worker = pipeline.worker("solo")

    assert ventilator.wait() == 0, ventilator.describe()
    worker.expect(r"^Task from 'batch-7': \d+ ms$")


def test_worker_answers_with_its_name_the_task_and_its_id_and_the_posts_tasks_without(
    pipeline: Pipeline, context: Context
) -> None:
    # Bare ventilator and sink around our worker: known tasks in, their results out.
    tasks, results = pipeline.play_ventilator_and_sink(context)
    pipeline.worker("solo")

    for task in [("bare", 5, 17), ("bare", 1), ("bare", 30, 18), ("bare", 2)]:
        tasks.send(pickle.dumps(task))

    assert [pickle.loads(receive(results)[0]) for _ in range(4)] == [
        ("solo", "bare", 5, 17),
        ("solo", "bare", 1),
        ("solo", "bare", 30, 18),
        ("solo", "bare", 2),
    ]


def test_worker_default_name_is_host_and_pid(pipeline: Pipeline) -> None:
    worker = pipeline.worker()

    match = re.match(r"^Worker (\S+) waits for tasks from ", worker.lines["stdout"][0])
    assert match, worker.describe()
    assert match[1].endswith(f"-{worker.popen.pid}")


def test_an_idle_http_client_on_the_task_port_gets_no_task(
    launch: Launcher, endpoints: Endpoints
) -> None:
    pipeline = Pipeline(launch, endpoints.tcp(), endpoints.ipc("results"))
    port = int(pipeline.tasks.rsplit(":", 1)[1])
    ventilator = pipeline.ventilator("--workers", "2", "--tasks", "20")
    # libzmq takes a peer whose first byte is not 0xFF for ZMTP 1.0, which has no handshake
    # event and no socket type: PUSH would deal it a share of the tasks, lost for good.
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as browser:
        browser.sendall(b"GET / HTTP/1.0\r\n\r\n")
        pipeline.workers("first", "second")

        assert ventilator.wait() == 0, ventilator.describe()
        assert tasks_per_worker(ventilator) == {"first": 10, "second": 10}
        # libzmq sends its greeting before it knows who is there, then closes the connection.
        with contextlib.suppress(ConnectionResetError):
            while browser.recv(100):
                pass


# A worker that answers each task at once, and says when it has answered a hundred.
QUICK_WORKER = (
    "import pickle, sys, zmq\n"
    "context = zmq.Context()\n"
    "tasks = context.socket(zmq.PULL)\n"
    "tasks.connect(sys.argv[1])\n"
    "results = context.socket(zmq.PUSH)\n"
    "results.connect(sys.argv[2])\n"
    "for number in range(1, 1_000_000):\n"
    "    name, workload, task_id = pickle.loads(tasks.recv())\n"
    "    results.send(pickle.dumps(('quick', name, workload, task_id)))\n"
    "    if number == 100:\n"
    "        print('answered 100', flush=True)\n"
)


def test_twenty_thousand_tasks_through_one_worker_that_answers_at_once(
    launch: Launcher, pipeline: Pipeline
) -> None:
    ventilator = pipeline.ventilator("--workers", "1", "--tasks", "20000", "--timeout", "5")
    # Sending everything before reading any result deadlocked: both queues full, both sides
    # blocked on a send.
    launch.python(QUICK_WORKER, pipeline.tasks, pipeline.results)

    assert ventilator.wait(timeout=WAIT * 3) == 0, ventilator.describe()
    assert tasks_per_worker(ventilator) == {"quick": 20000}


def test_a_worker_killed_while_tasks_are_still_being_sent_ends_in_the_timeout(
    launch: Launcher, pipeline: Pipeline
) -> None:
    ventilator = pipeline.ventilator("--workers", "1", "--tasks", "20000", "--timeout", "0.5")
    worker = launch.python(QUICK_WORKER, pipeline.tasks, pipeline.results)
    worker.expect("^answered 100$")
    worker.signal(signal.SIGKILL)

    assert ventilator.wait() == 1, ventilator.describe()
    ventilator.expect(r"^No result for 0\.5 s: \d+ of 20000 results missing\.$", stream="stderr")
    assert "Sent 20000 tasks" not in ventilator.stdout


def test_results_of_an_earlier_run_do_not_count_in_the_next(
    pipeline: Pipeline, context: Context
) -> None:
    tasks, results = pipeline.play_worker(context)
    first = pipeline.ventilator("--workers", "1", "--tasks", "3")
    earlier = [pickle.loads(receive(tasks)[0]) for _ in range(3)]
    first.signal(signal.SIGTERM)
    assert first.wait() == 130, first.describe()

    second = pipeline.ventilator("--workers", "1", "--tasks", "3")
    current = [pickle.loads(receive(tasks)[0]) for _ in range(3)]
    # The same task ids, 1 to 3, in both runs: only the run's name tells them apart.
    for run_name, workload, task_id in earlier + current:
        results.send(pickle.dumps(("late", run_name, workload, task_id)))

    assert second.wait() == 0, second.describe()
    earlier_run = earlier[0][0]
    assert earlier_run != current[0][0]
    for _ in range(3):
        second.expect(
            rf"^Ignored a result: it answers another run's task \('{earlier_run}'\)$",
            stream="stderr",
        )
    assert tasks_per_worker(second) == {"late": 3}


def test_results_are_matched_on_the_task_id_and_its_workload(
    pipeline: Pipeline, context: Context
) -> None:
    tasks, results = pipeline.play_worker(context)
    ventilator = pipeline.ventilator("--workers", "1", "--tasks", "2")
    (run_name, first, first_id), (_, second, second_id) = (
        pickle.loads(receive(tasks)[0]) for _ in range(2)
    )
    wrong = first % 100 + 1  # Another workload, 1 to 100 as the real ones are.

    # The right id with a wrong workload; the right workload without an id (the post's 3-tuple);
    # and an id that this run never sent.
    results.send(pickle.dumps(("w", run_name, wrong, first_id)))
    results.send(pickle.dumps(("w", run_name, first)))
    results.send(pickle.dumps(("w", run_name, first, 99)))
    results.send(pickle.dumps(("w", run_name, first, first_id)))
    results.send(pickle.dumps(("w", run_name, second, second_id)))

    assert ventilator.wait() == 0, ventilator.describe()
    assert ventilator.lines["stderr"] == [
        "Ignored a result: it answers no task of this run",
        "Ignored a result: expected a pickled (worker, run, workload, task id) of plain data",
        "Ignored a result: it answers no task of this run",
    ]
    ventilator.expect(rf"^Result 1/2 from 'w': task {first_id}, {first} ms$")
    ventilator.expect(rf"^Result 2/2 from 'w': task {second_id}, {second} ms$")
    assert tasks_per_worker(ventilator) == {"w": 2}


def test_a_result_sent_twice_is_never_credited_to_another_task(
    pipeline: Pipeline, context: Context
) -> None:
    tasks, results = pipeline.play_worker(context)
    # The time a loaded machine may take to get the test's first result out.
    ventilator = pipeline.ventilator("--workers", "1", "--tasks", "2", "--timeout", "1")
    (run_name, workload, task_id), _never_answered = (
        pickle.loads(receive(tasks)[0]) for _ in range(2)
    )

    # A worker that answers one task twice, and the other never.
    for _ in range(2):
        results.send(pickle.dumps(("w", run_name, workload, task_id)))

    assert ventilator.wait() == 1, ventilator.describe()
    assert ventilator.lines["stderr"] == [
        f"Ignored a result: task {task_id} was answered already",
        "No result for 1 s: 1 of 2 results missing.",
    ]
    assert "All 2 results in." not in ventilator.stdout


def test_workers_already_running_all_get_tasks_even_with_workers_1(pipeline: Pipeline) -> None:
    workers = pipeline.workers("alpha", "beta", "gamma")

    ventilator = pipeline.ventilator("--workers", "1", "--tasks", "15")

    assert ventilator.wait() == 0, ventilator.describe()
    assert tasks_per_worker(ventilator) == {"alpha": 5, "beta": 5, "gamma": 5}
    assert all(worker.popen.poll() is None for worker in workers)


def test_a_worker_that_leaves_before_the_start_is_no_longer_counted(pipeline: Pipeline) -> None:
    ventilator = pipeline.ventilator("--workers", "2", "--tasks", "20")
    leaver = pipeline.worker("leaver")
    ventilator.expect(r"^Workers connected: 1 of 2$")
    leaver.signal(signal.SIGKILL)
    ventilator.expect(r"^Workers connected: 0 of 2$")

    pipeline.workers("stayer", "latecomer")

    assert ventilator.wait() == 0, ventilator.describe()
    assert tasks_per_worker(ventilator) == {"stayer": 10, "latecomer": 10}


def test_a_worker_sent_an_oversized_task_connects_again_and_takes_the_next(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    pipeline = Pipeline(launch, endpoints.tcp(), endpoints.ipc("results"))
    tasks, results = pipeline.play_ventilator_and_sink(context)
    worker = pipeline.worker("w")

    # A ventilator named with 5,000 characters sends just such a task.
    tasks.send(pickle.dumps(("v" * 5000, 1, 1)))
    worker.expect(r"^Dropped tcp://\S+ for breaking the protocol", stream="stderr")
    # A task with an id: the worker must know it is connected again, or it would skip it.
    tasks.send(pickle.dumps(("after", 2, 2)))

    assert pickle.loads(receive(results)[0]) == ("w", "after", 2, 2)
    worker.expect(r"^Task from 'after': 2 ms$")
    assert len(worker.lines["stderr"]) == 1, worker.describe()


def test_a_worker_whose_ventilator_restarts_takes_its_tasks(pipeline: Pipeline) -> None:
    worker = pipeline.worker("w")
    first = pipeline.ventilator("--workers", "1", "--tasks", "3")
    assert first.wait() == 0, first.describe()

    second = pipeline.ventilator("--workers", "1", "--tasks", "3")

    assert second.wait() == 0, second.describe()
    assert tasks_per_worker(second) == {"w": 3}
    assert "Skipped" not in worker.stdout
    # libzmq reconnected by itself: nothing to say about it.
    assert worker.lines["stderr"] == [], worker.describe()


@contextlib.contextmanager
def ventilator_that_goes(endpoint: str) -> Iterator[zmq.Socket[bytes]]:
    """A bare ventilator bound on `endpoint`, which goes when the block ends, as a stopped one
    does: once every task it was given has reached the worker, which then has them queued."""
    with zmq.Context() as context, context.socket(zmq.PUSH) as ventilator:
        ventilator.setsockopt(zmq.SNDTIMEO, int(WAIT * 1000))
        ventilator.bind(endpoint)
        try:
            yield ventilator
        except BaseException:
            ventilator.setsockopt(zmq.LINGER, 0)
            raise
        ventilator.setsockopt(zmq.LINGER, int(WAIT * 1000))


def test_a_worker_skips_the_tasks_queued_from_a_ventilator_that_has_gone(
    pipeline: Pipeline, context: Context
) -> None:
    results = pipeline.play_sink(context)
    worker = pipeline.worker("w")

    with ventilator_that_goes(pipeline.tasks) as ventilator:
        # Four seconds of work, for a run whose sink goes with its ventilator.
        for task_id in range(1, 21):
            ventilator.send(pickle.dumps(("gone", 200, task_id)))
        worker.expect(r"^Task from 'gone': 200 ms$")

    outcomes = [worker.expect(r"^(Task from|Skipped task \d+ of) 'gone'")[0] for _ in range(19)]
    # The ventilator went during the first task: at most the next was taken before that showed.
    done = 1 + outcomes.count("Task from 'gone'")
    assert done <= 2, worker.describe()
    skipped = [f"Skipped task {task_id} of 'gone'" for task_id in range(done + 1, 21)]
    assert outcomes[done - 1 :] == skipped, worker.describe()
    assert [pickle.loads(receive(results)[0]) for _ in range(done)] == [
        ("w", "gone", 200, task_id) for task_id in range(1, done + 1)
    ]


def test_a_worker_does_every_task_of_the_posts_ventilator_even_after_it_has_gone(
    pipeline: Pipeline, context: Context
) -> None:
    results = pipeline.play_sink(context)
    worker = pipeline.worker("w")

    # The post's ventilator sends its tasks, which have no id, and exits at once.
    with ventilator_that_goes(pipeline.tasks) as ventilator:
        for _ in range(20):
            ventilator.send(pickle.dumps(("post", 1)))

    for _ in range(20):
        worker.expect(r"^Task from 'post': 1 ms$")
    assert [pickle.loads(receive(results)[0]) for _ in range(20)] == [("w", "post", 1)] * 20
    assert "Skipped" not in worker.stdout


def test_connections_that_come_and_go_do_not_hold_up_the_start(
    launch: Launcher, endpoints: Endpoints
) -> None:
    pipeline = Pipeline(launch, endpoints.tcp(), endpoints.ipc("results"))
    port = int(pipeline.tasks.rsplit(":", 1)[1])
    ventilator = pipeline.ventilator("--workers", "1", "--tasks", "3")
    pipeline.worker("w")

    # A port scanner knocking every 50 ms: only a worker joining may delay the start.
    deadline = time.monotonic() + WAIT
    while "Sent 3 tasks" not in ventilator.stdout and time.monotonic() < deadline:
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
        time.sleep(0.05)

    assert ventilator.wait() == 0, ventilator.describe()
    assert tasks_per_worker(ventilator) == {"w": 3}
