"""reliable/: nothing lost. The Lazy Pirate request client, and the ventilator that sends the
missing tasks again."""

from __future__ import annotations

import pickle
import re
import signal

import zmq

from conftest import Endpoints, Launcher, Pipeline, Process, receive, tasks_per_worker

Context = zmq.Context[zmq.Socket[bytes]]
Task = tuple[str, int, int]


def not_running(endpoint: str, timeout: str = "1") -> str:
    return (
        f"No reply from {endpoint} within {timeout} s. Is the server running? Start it with: "
        "uv run server_req_repl.py"
    )


def retrying(number: int, of: int) -> str:
    return f"Sending it again ({number} of {of})."


def lazy_pirate(launch: Launcher, endpoint: str, *args: str) -> Process:
    return launch.script("reliable/client_req_repl.py", "--connect", endpoint, *args)


def test_a_client_with_retries_is_answered_by_a_server_that_starts_late(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.tcp()
    client = lazy_pirate(launch, endpoint, "--retries", "3", "--timeout", "1")
    client.expect(rf"^{re.escape(retrying(1, 3))}$", "stderr")

    server = launch.reply_server(endpoint)

    assert client.wait() == 0, client.describe()
    assert client.lines["stdout"] == [
        "Received reply b'Hello world 1*'",
        "Received reply b'STOP*'",
    ]
    # Each wait that ran out said why, then that it sends the request again.
    tries = len(client.lines["stderr"]) // 2
    assert 1 <= tries <= 3, client.describe()
    said = [(not_running(endpoint), retrying(number, 3)) for number in range(1, tries + 1)]
    assert client.lines["stderr"] == [line for pair in said for line in pair]
    assert server.wait() == 0, server.describe()
    # The request went out again on a new socket; only one was there to be answered.
    assert server.lines["stdout"].count("Received b'Hello world 1'") == 1, server.describe()


def test_a_server_that_swallows_the_request_is_replaced_and_the_retry_is_answered(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    endpoint = endpoints.ipc("reqrep")
    silent = context.socket(zmq.REP)
    silent.bind(endpoint)
    client = lazy_pirate(launch, endpoint, "--retries", "3", "--timeout", "1")
    assert receive(silent) == [b"Hello world 1"]
    silent.close(linger=0)

    launch.reply_server(endpoint)

    assert client.wait() == 0, client.describe()
    assert client.lines["stdout"] == [
        "Received reply b'Hello world 1*'",
        "Received reply b'STOP*'",
    ]
    client.expect(rf"^{re.escape(retrying(1, 3))}$", "stderr")


def test_with_no_server_the_client_gives_up_after_its_retries(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.ipc("nobody")

    # Nothing can answer, so a short timeout changes nothing but the time the three tries take.
    client = lazy_pirate(launch, endpoint, "--retries", "2", "--timeout", "0.4")

    assert client.wait() == 1, client.describe()
    assert client.lines["stderr"] == [
        not_running(endpoint, "0.4"),
        retrying(1, 2),
        not_running(endpoint, "0.4"),
        retrying(2, 2),
        not_running(endpoint, "0.4"),
    ]
    assert client.lines["stdout"] == []


def test_stop_is_not_sent_again_to_the_posts_server_which_ends_on_it_without_a_reply(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.ipc("reqrep")
    post_server = launch.post_peer("server_req_repl.py", endpoint)

    client = lazy_pirate(launch, endpoint, "--retries", "1", "--timeout", "1")

    assert client.wait() == 0, client.describe()
    assert client.lines["stdout"] == [
        "Received reply b'Hello world 1*'",
        "Sent STOP: the server closed the connection.",
    ]
    assert client.lines["stderr"] == []
    assert post_server.wait() == 0, post_server.describe()


# The reliable ventilator, with our workers or bare ones.


def reliable_ventilator(pipeline: Pipeline, *args: str) -> Process:
    """reliable/server_pipeline.py, once it has bound both endpoints."""
    process = pipeline.launch.script(
        "reliable/server_pipeline.py", "--bind", pipeline.tasks, "--results", pipeline.results,
        *args,
    )  # fmt: skip
    process.expect(r"^Ventilator on ")
    return process


def round_line(timeout: str, missing: int, tasks: int, round_number: int, rounds: int) -> str:
    return (
        f"No result for {timeout} s: {missing} of {tasks} results missing: sending them again "
        f"(round {round_number} of {rounds})."
    )


def receive_tasks(tasks: zmq.Socket[bytes], count: int) -> list[Task]:
    """The next `count` tasks on a bare worker's PULL socket: (run name, workload, task id)."""
    return [pickle.loads(receive(tasks)[0]) for _ in range(count)]


def answer(results: zmq.Socket[bytes], task: Task, worker_name: str = "bare") -> None:
    run_name, workload_ms, task_id = task
    results.send(pickle.dumps((worker_name, run_name, workload_ms, task_id)))


def test_tasks_lost_with_a_killed_worker_are_sent_again_to_the_others(
    pipeline: Pipeline,
) -> None:
    # A round that a slow survivor sets off too soon only adds duplicates, which are counted.
    ventilator = reliable_ventilator(
        pipeline, "--workers", "3", "--tasks", "15", "--timeout", "0.5", "--retries", "3"
    )
    *_, victim = pipeline.workers("survivor-1", "survivor-2", "victim")
    victim.expect("^Task from ")
    victim.signal(signal.SIGKILL)
    victim.wait()

    assert ventilator.wait() == 0, ventilator.describe()
    ventilator.expect(r"^All 15 results in\.$")
    again = ventilator.expect(r"^Tasks sent again: (\d+); duplicates ignored: (\d+)\.$")
    assert int(again[1]) > 0
    counts = tasks_per_worker(ventilator)
    assert sum(counts.values()) == 15
    # More than their own two shares of five: they did the victim's too.
    assert counts["survivor-1"] + counts["survivor-2"] > 10
    ventilator.expect(
        r"^No result for 0\.5 s: [1-9]\d* of 15 results missing: sending them again "
        r"\(round 1 of 3\)\.$",
        "stderr",
    )


def test_with_every_worker_gone_the_ventilator_gives_up_after_its_retries(
    pipeline: Pipeline,
) -> None:
    # The timeout need only outlast the news of the kill, which takes milliseconds to reach the
    # ventilator; the run lasts three timeouts.
    ventilator = reliable_ventilator(
        pipeline, "--workers", "1", "--tasks", "40", "--timeout", "0.3", "--retries", "2"
    )
    worker = pipeline.worker("only")
    worker.expect("^Task from ")
    worker.signal(signal.SIGKILL)
    worker.wait()

    assert ventilator.wait() == 1, ventilator.describe()
    ventilator.expect(r"^A worker left: 0 connected\.$", "stderr")
    first = ventilator.expect(
        r"^No result for 0\.3 s: ([1-9]\d*) of 40 results missing: sending them again "
        r"\(round 1 of 2\)\.$",
        "stderr",
    )
    # Nobody was there to answer: the same tasks are missing at every round, and at the end.
    missing = int(first[1])
    assert ventilator.lines["stderr"] == [
        "A worker left: 0 connected.",
        round_line("0.3", missing, 40, 1, 2),
        round_line("0.3", missing, 40, 2, 2),
        f"No result for 0.3 s: {missing} of 40 results missing.",
    ]


def test_each_round_says_how_many_results_are_missing_and_sends_those_tasks_again(
    pipeline: Pipeline, context: Context
) -> None:
    tasks, results = pipeline.play_worker(context)
    ventilator = reliable_ventilator(
        pipeline, "--workers", "1", "--tasks", "10", "--timeout", "0.3", "--retries", "2"
    )
    sent = receive_tasks(tasks, 10)

    # All ten lost: all ten are missing, and go out again (defect 3: it said 0, and sent none).
    ventilator.expect(rf"^{re.escape(round_line('0.3', 10, 10, 1, 2))}$", "stderr")
    assert sorted(receive_tasks(tasks, 10)) == sorted(sent)
    for task in sent[:3]:
        answer(results, task)

    # Three answered: the seven others are missing, and only they go out again.
    ventilator.expect(rf"^{re.escape(round_line('0.3', 7, 10, 2, 2))}$", "stderr")
    assert sorted(receive_tasks(tasks, 7)) == sorted(sent[3:])
    assert ventilator.wait() == 1, ventilator.describe()
    ventilator.expect(r"^No result for 0\.3 s: 7 of 10 results missing\.$", "stderr")
    assert not tasks.poll(0), "a task went out a third time"


def test_a_result_that_comes_after_its_task_was_sent_again_counts_once(
    pipeline: Pipeline, context: Context
) -> None:
    tasks, results = pipeline.play_worker(context)
    ventilator = reliable_ventilator(
        pipeline, "--workers", "1", "--tasks", "3", "--timeout", "1", "--retries", "1"
    )
    sent = receive_tasks(tasks, 3)
    slow, *others = sent

    # The slow task's result is late: the ventilator sends the unanswered tasks again.
    ventilator.expect(rf"^{re.escape(round_line('1', 3, 3, 1, 1))}$", "stderr")
    assert sorted(receive_tasks(tasks, 3)) == sorted(sent)
    answer(results, slow, "slow")  # the late result of the first sending
    answer(results, slow, "slow")  # and the result of the second
    for task in others:
        answer(results, task, "w")

    assert ventilator.wait() == 0, ventilator.describe()
    ventilator.expect(rf"^Ignored a result: task {slow[2]} was answered already$", "stderr")
    ventilator.expect(r"^Tasks sent again: 3; duplicates ignored: 1\.$")
    assert tasks_per_worker(ventilator) == {"slow": 1, "w": 2}


def test_a_result_that_comes_while_its_task_waits_to_be_sent_again_cancels_that(
    pipeline: Pipeline, context: Context
) -> None:
    first_worker, results = pipeline.play_worker(context)
    # Rounds to spare: a round with nothing new to queue changes nothing.
    ventilator = reliable_ventilator(
        pipeline, "--workers", "1", "--tasks", "4", "--timeout", "0.5", "--retries", "20"
    )
    sent = {task[2]: task for task in receive_tasks(first_worker, 4)}
    # The worker goes with its four tasks unanswered. With no worker, PUSH has nowhere to send:
    # each round queues the tasks still missing, and they wait there. Two rounds: the second
    # must not queue again the tasks that the first has queued.
    first_worker.close(linger=0)
    ventilator.expect(r"^A worker left: 0 connected\.$", "stderr")
    for round_number in (1, 2):
        ventilator.expect(rf"^{re.escape(round_line('0.5', 4, 4, round_number, 20))}$", "stderr")
    assert len(ventilator.lines["stderr"]) == 3, "a round came before the worker had gone"

    # Results for two of the waiting tasks come after all (from a worker that had been slow):
    # the two that the queue would send first.
    for task_id in (4, 3):
        answer(results, sent[task_id])
        ventilator.expect(rf"^Result \d/4 from 'bare': task {task_id}, ")
    second_worker = context.socket(zmq.PULL)
    second_worker.connect(pipeline.tasks)

    # Only the two still unanswered go out again, once each.
    sent_again = receive_tasks(second_worker, 2)
    assert sorted(task[2] for task in sent_again) == [1, 2]
    for task in sent_again:
        answer(results, task)
    assert ventilator.wait() == 0, ventilator.describe()
    ventilator.expect(r"^Tasks sent again: 2; duplicates ignored: 0\.$")
    assert not second_worker.poll(0), "an answered task went out again"


def test_the_posts_worker_gets_the_same_tasks_when_retries_are_on(
    launch: Launcher, pipeline: Pipeline
) -> None:
    # The post's worker never answers: each round is as long as the timeout, whatever it is.
    ventilator = reliable_ventilator(
        pipeline, "--workers", "1", "--tasks", "5", "--timeout", "0.3", "--retries", "1"
    )

    post_worker = launch.post_peer("client_pipeline.py", "post-worker", pipeline.tasks)

    # Five tasks, then the same five again: the post's worker sends no results.
    printed = [
        post_worker.expect(r"^\('ventilator-[0-9a-f]{6}', \d+, \d+\)$")[0] for _ in range(10)
    ]
    assert sorted(printed[:5]) == sorted(printed[5:])
    assert len(set(printed)) == 5
    assert ventilator.wait() == 1, ventilator.describe()
    assert ventilator.lines["stderr"] == [
        round_line("0.3", 5, 5, 1, 1),
        "No result for 0.3 s: 5 of 5 results missing.",
    ]
