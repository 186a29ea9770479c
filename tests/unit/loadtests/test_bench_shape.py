"""bench_shape's accounting: CPU split between serving processes and Kafka producer children,
the per-round rows every chat mode prints, and the --producers option."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from feedback.config import KafkaConfig
from feedback.sinks.kafka_process import child_command
from loadtests.bench_shape import (
    PRODUCER_MODULE,
    VIEWS,
    Load,
    ProcCpu,
    _round_rows,
    cpu_by_role,
    kafka_events,
    process_labels,
    process_role,
    producer_modes,
    tree_reading,
)

PRODUCER = ("/usr/bin/python3", "-m", PRODUCER_MODULE)
SERVE = ("/usr/bin/python3", "-P", "-m", "cli", "serve", "--config", "g.yaml")
WORKER = ("/usr/bin/python3", "-c", "from multiprocessing.spawn import spawn_main; spawn_main()")
TRACKER = ("/usr/bin/python3", "-c", "from multiprocessing.resource_tracker import main")


def test_a_producer_child_is_known_by_its_arguments() -> None:
    assert process_role(PRODUCER) == "producer"
    assert process_role(SERVE) == "serving"
    assert process_role(WORKER) == "serving"
    # Named inside code, not as an argument of its own (as the test parent below does).
    assert process_role(("python", "-c", f"run('{PRODUCER_MODULE}')")) == "serving"


def test_cpu_by_role_charges_each_process_its_own_delta() -> None:
    before = {
        1: ProcCpu(SERVE, 1.0),
        2: ProcCpu(PRODUCER, 0.5),
        3: ProcCpu(TRACKER, 0.2),
        5: ProcCpu(WORKER, 2.0),
    }
    after = {
        1: ProcCpu(SERVE, 1.5),
        2: ProcCpu(PRODUCER, 1.25),
        4: ProcCpu(PRODUCER, 0.25),  # started in the window: counted from zero
        5: ProcCpu(WORKER, 2.5),
    }  # 3 exited in the window: what it used is lost, as documented
    assert cpu_by_role(before, after) == {"serving": 1.0, "producer": 1.0}
    assert cpu_by_role(after, after) == {"serving": 0.0, "producer": 0.0}


def test_labels_name_the_root_workers_and_producers() -> None:
    one = {10: ProcCpu(SERVE, 1.0), 11: ProcCpu(PRODUCER, 1.0)}
    assert process_labels(one) == {10: "serve 10", 11: "producer 11"}
    many = {
        20: ProcCpu((*SERVE, "--workers", "2"), 0.1),
        21: ProcCpu(TRACKER, 0.0),
        22: ProcCpu(WORKER, 1.0),
        23: ProcCpu(PRODUCER, 1.0),
    }
    assert process_labels(many) == {
        20: "supervisor 20",
        21: "helper 21",
        22: "worker 22",
        23: "producer 23",
    }


# A parent that starts a child with the producer module as an argument; the child burns 0.3 s
# of CPU, then both wait for their stdin to close.
_CHILD = """
import sys, time
t = time.process_time()
while time.process_time() - t < 0.3:
    pass
print("ready", flush=True)
sys.stdin.read()
"""
_PARENT = f"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", {_CHILD!r}, {PRODUCER_MODULE!r}],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
child.stdout.readline()
print(child.pid, flush=True)
sys.stdin.read()
child.stdin.close()
child.wait()
"""


@pytest.fixture
def tree() -> Iterator[tuple[int, int]]:
    """(parent pid, child pid) of a live two-process tree."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert parent.stdin is not None
    assert parent.stdout is not None
    try:
        child = int(parent.stdout.readline())
        yield parent.pid, child
    finally:
        parent.stdin.close()
        try:
            parent.wait(10)
        except subprocess.TimeoutExpired:
            parent.kill()
            parent.wait()
        parent.stdout.close()


def test_a_real_producer_child_is_charged_apart_from_its_parent(tree: tuple[int, int]) -> None:
    parent, child = tree
    reading = tree_reading(parent)
    assert list(reading) == [parent, child]
    assert reading[parent].role == "serving"
    assert reading[child].role == "producer"
    used = cpu_by_role({}, reading)
    assert used["producer"] >= 0.2  # the child's 0.3 s, in clock ticks
    assert used["producer"] == reading[child].cpu_s
    assert used["serving"] == reading[parent].cpu_s
    assert Path(f"/proc/{child}").exists()


def _load(cpu_s: float, producer_cpu_s: float = 0.0, errors: int = 0) -> Load:
    return Load(
        calls=1000,
        errors=errors,
        seconds=2.0,
        cpu_s=cpu_s,
        served=1000,
        producer_cpu_s=producer_cpu_s,
    )


def test_serving_leaves_the_producer_children_out() -> None:
    load = _load(0.6, producer_cpu_s=0.2)
    assert load.cpu_ms_per_call == pytest.approx(0.6)
    assert load.serving().cpu_ms_per_call == pytest.approx(0.4)
    assert load.serving().calls == load.calls


def test_round_rows_print_what_the_kafka_and_workers_tables_printed() -> None:
    loads = {"w1": [_load(0.5), _load(0.4)], "w2": [_load(0.6, errors=3), _load(0.5)]}
    assert _round_rows(loads, "w1") == [
        ["1", "w1", "500", "0.500", "1.00x", "0"],
        ["1", "w2", "498", "0.600", "1.20x", "3"],
        ["2", "w1", "500", "0.400", "1.00x", "0"],
        ["2", "w2", "500", "0.500", "1.25x", "0"],
    ]


def test_round_rows_give_serving_then_whole_tree() -> None:
    loads = {"spool": [_load(0.5)], "kafka-process": [_load(0.75, producer_cpu_s=0.2)]}
    assert _round_rows(loads, "spool", VIEWS) == [
        ["1", "spool", "500", "0.500", "1.00x", "0.500", "1.00x", "0"],
        ["1", "kafka-process", "500", "0.550", "1.10x", "0.750", "1.50x", "0"],
    ]


def test_producers_option() -> None:
    assert producer_modes("process") == ["process"]
    assert producer_modes("thread, process,thread") == ["thread", "process"]
    for bad in ("", "fork", "process,fork"):
        with pytest.raises(argparse.ArgumentTypeError):
            producer_modes(bad)


def test_kafka_events_set_the_producer_only_when_asked(tmp_path: Path) -> None:
    plain = kafka_events(tmp_path, "k", "127.0.0.1:9092")
    assert plain["kafka"] == {"bootstrap_servers": ["127.0.0.1:9092"]}
    thread = kafka_events(tmp_path, "k", "127.0.0.1:9092", "thread")
    assert thread["kafka"] == {"bootstrap_servers": ["127.0.0.1:9092"], "producer": "thread"}
    assert thread["spool"] == plain["spool"]


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_the_gateway_takes_the_producer_key_bench_shape_writes(tmp_path: Path, mode: str) -> None:
    events = kafka_events(tmp_path, "k", "127.0.0.1:9092", mode)
    assert KafkaConfig.model_validate(events["kafka"]).producer == mode


def test_the_producer_child_the_gateway_starts_is_known_as_one() -> None:
    assert process_role(tuple(child_command())) == "producer"
