"""Nothing lost: --retries on the request-reply client (Lazy Pirate) and on the ventilator."""

from __future__ import annotations

import pickle
import re
import signal

import pytest
import zmq

from conftest import Endpoints, Launcher, Pipeline, receive, tasks_per_worker

Context = zmq.Context[zmq.Socket[bytes]]


def retry_line(endpoint: str, number: int, of: int, timeout: str = "1") -> str:
    return f"No reply from {re.escape(endpoint)} within {timeout} s: retrying, {number} of {of}\\.$"


def test_a_client_with_retries_is_answered_by_a_server_that_starts_late(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.tcp()
    client = launch.script(
        "client_req_repl.py", "--connect", endpoint, "--retries", "3", "--timeout", "1"
    )
    client.expect(retry_line(endpoint, 1, 3), stream="stderr")

    server = launch.reply_server(endpoint)

    assert client.wait() == 0, client.describe()
    assert client.lines["stdout"][0] == "Received reply b'Hello world 1*'"
    assert client.lines["stdout"].count("Received reply b'Hello world 1*'") == 1
    retries = len(client.lines["stderr"])
    assert 1 <= retries <= 3
    for number, line in enumerate(client.lines["stderr"], start=1):
        assert re.fullmatch(retry_line(endpoint, number, 3), line), line
    assert server.wait() == 0, server.describe()
    # Each retry sent the request again, so the server may have seen it more than once.
    assert server.stdout.count("Received b'Hello world 1'") >= 1


def test_a_server_that_swallows_the_request_is_replaced_and_the_retry_is_answered(
    launch: Launcher, endpoints: Endpoints, context: Context
) -> None:
    endpoint = endpoints.ipc("reqrep")
    silent = context.socket(zmq.REP)
    silent.bind(endpoint)
    client = launch.script(
        "client_req_repl.py", "--connect", endpoint, "--retries", "3", "--timeout", "1"
    )
    assert receive(silent) == [b"Hello world 1"]
    silent.close(linger=0)

    launch.reply_server(endpoint)

    assert client.wait() == 0, client.describe()
    client.expect(r"^Received reply b'Hello world 1\*'$")
    client.expect(retry_line(endpoint, 1, 3), stream="stderr")


def test_with_no_server_the_client_gives_up_after_its_retries(
    launch: Launcher, endpoints: Endpoints
) -> None:
    endpoint = endpoints.ipc("nobody")

    # Nothing can answer, so a short timeout changes nothing but the time the three tries take.
    client = launch.script(
        "client_req_repl.py", "--connect", endpoint, "--retries", "2", "--timeout", "0.4"
    )

    assert client.wait() == 1, client.describe()
    assert len(client.lines["stderr"]) == 3, client.describe()
    assert re.fullmatch(retry_line(endpoint, 1, 2, "0.4"), client.lines["stderr"][0])
    assert re.fullmatch(retry_line(endpoint, 2, 2, "0.4"), client.lines["stderr"][1])
    assert client.lines["stderr"][2].startswith(f"No reply from {endpoint} within 0.4 s. Is the")
    assert client.lines["stdout"] == []


def unique_workload(workloads: list[int]) -> int:
    """A workload that only one task has: its result cannot stand for another task's."""
    unique = [workload for workload in workloads if workloads.count(workload) == 1]
    if not unique:
        pytest.skip("every task drew the same workload (about once in 10,000 runs)")
    return unique[0]


def test_tasks_lost_with_a_killed_worker_are_sent_again_to_the_others(
    pipeline: Pipeline,
) -> None:
    # A round that a slow survivor sets off too soon only adds duplicates, which are counted.
    ventilator = pipeline.ventilator(
        "--workers", "3", "--tasks", "15", "--timeout", "0.5", "--retries", "3"
    )
    *_, victim = pipeline.workers("survivor-1", "survivor-2", "victim")
    victim.expect("^Task from ")
    victim.signal(signal.SIGKILL)
    victim.wait()

    assert ventilator.wait() == 0, ventilator.describe()
    ventilator.expect(r"^All 15 results in\.$")
    again = ventilator.expect(r"^Sent (\d+) tasks? again; ignored (\d+) duplicate results?\.$")
    assert int(again[1]) > 0
    counts = tasks_per_worker(ventilator)
    assert sum(counts.values()) == 15
    # More than their own two shares of five: they did the victim's too.
    assert counts["survivor-1"] + counts["survivor-2"] > 10
    ventilator.expect(
        r"^No result for 0\.5 s: sending the \d+ missing tasks? again \(round 1 of 3\)\.$",
        stream="stderr",
    )


def test_with_every_worker_gone_the_ventilator_says_so_and_gives_up_after_its_retries(
    pipeline: Pipeline,
) -> None:
    # The timeout need only outlast the news of the kill, which takes milliseconds to reach the
    # ventilator; the run lasts three timeouts.
    ventilator = pipeline.ventilator(
        "--workers", "1", "--tasks", "40", "--timeout", "0.4", "--retries", "2"
    )
    worker = pipeline.worker("only")
    worker.expect("^Task from ")
    worker.signal(signal.SIGKILL)
    worker.wait()

    assert ventilator.wait() == 1, ventilator.describe()
    ventilator.expect(r"^A worker left: 0 connected\.$", stream="stderr")
    for round_number in (1, 2):
        ventilator.expect(
            rf"^No result for 0\.4 s: \d+ missing tasks? and no worker connected: they go to "
            rf"the next worker that joins \(round {round_number} of 2\)\.$",
            stream="stderr",
        )
    ventilator.expect(r"^No result for 0\.4 s: \d+ of 40 results missing\.$", stream="stderr")


def test_a_result_that_comes_after_its_task_was_sent_again_counts_once(
    pipeline: Pipeline, context: Context
) -> None:
    tasks, results = pipeline.play_worker(context)
    ventilator = pipeline.ventilator(
        "--workers", "1", "--tasks", "3", "--timeout", "1", "--retries", "1"
    )
    sent = [pickle.loads(receive(tasks)[0]) for _ in range(3)]
    run_name = sent[0][0]
    slow = unique_workload([workload for _, workload in sent])

    # The slow task's result is late: the ventilator sends the unanswered tasks again.
    ventilator.expect(r"^No result for 1 s: sending the 3 missing tasks again", stream="stderr")
    sent_again = sorted(pickle.loads(receive(tasks)[0])[1] for _ in range(3))
    assert sent_again == sorted(workload for _, workload in sent)
    late_and_again = [pickle.dumps(("slow", run_name, slow))] * 2
    others = [pickle.dumps(("w", run_name, w)) for _, w in sent if w != slow]
    for result in late_and_again + others:
        results.send(result)

    assert ventilator.wait() == 0, ventilator.describe()
    ventilator.expect(
        rf"^Ignored a duplicate result: the {slow} ms task was answered already\.$", stream="stderr"
    )
    ventilator.expect(r"^Sent 3 tasks again; ignored 1 duplicate result\.$")
    assert tasks_per_worker(ventilator) == {"slow": 1, "w": 2}


def test_the_posts_worker_gets_the_same_tasks_when_retries_are_on(
    launch: Launcher, pipeline: Pipeline
) -> None:
    # The post's worker never answers: each round is as long as the timeout, whatever it is.
    ventilator = pipeline.ventilator(
        "--workers", "1", "--tasks", "5", "--timeout", "0.5", "--retries", "1"
    )

    post_worker = launch.post_peer("client_pipeline.py", "post-worker", pipeline.tasks)

    # Five tasks, then the same five again: the post's worker sends no results.
    for _ in range(10):
        post_worker.expect(r"^\('ventilator-[0-9a-f]{6}', \d+\)$")
    assert ventilator.wait() == 1, ventilator.describe()
