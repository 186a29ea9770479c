"""The sink's partitioner gives kafka-python's (and the Java client's) default partitions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback.config import KafkaConfig
from feedback.schema import COMPLETIONS_TOPIC, FEEDBACK_TOPIC
from feedback.sinks.base import Record
from feedback.sinks.kafka import KafkaSink, load_kafka_client
from feedback.sinks.partition import _c_murmur2, kafka_partition, make_partitioner
from tests.support.kafka import TansuBroker, consume_all

load_kafka_client()
from kafka.partitioner import DefaultPartitioner  # noqa: E402
from kafka.partitioner.default import murmur2  # noqa: E402

c_murmur2 = _c_murmur2()
needs_c = pytest.mark.skipif(c_murmur2 is None, reason="murmurhash2 is not installed")

# Keys of every length near the 4-byte blocks (empty, 1-3 byte tails), raw bytes and
# non-ASCII text as UTF-8, and response-id-sized ones.
keys = st.one_of(
    st.binary(max_size=9),
    st.binary(min_size=150, max_size=260),
    st.text(max_size=40).map(str.encode),
    st.text(alphabet="éßø€😀中\x00\x7f\xff", max_size=12).map(str.encode),
)


@needs_c
@settings(max_examples=2000, deadline=None)
@given(key=keys, partitions=st.integers(min_value=1, max_value=1000))
def test_c_hash_gives_kafka_pythons_partition(key: bytes, partitions: int) -> None:
    assert c_murmur2 is not None
    assert c_murmur2(key) == murmur2(key)
    expected = (murmur2(key) & 0x7FFFFFFF) % partitions
    assert kafka_partition(c_murmur2, key, partitions) == expected


@needs_c
def test_known_java_client_values() -> None:
    # org.apache.kafka.common.utils.UtilsTest#testMurmur2 (as signed ints there).
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        bytes([ord("a"), ord("b"), ord("c")]): 479470107,
    }
    assert c_murmur2 is not None
    for key, signed in cases.items():
        assert c_murmur2(key) == signed & 0xFFFFFFFF == murmur2(key)


class _Cluster:
    """The three calls a partitioner makes of kafka-python's ClusterMetadata."""

    def __init__(self, partitions: dict[str, set[int]], internal: tuple[str, ...] = ()) -> None:
        self._partitions = partitions
        self.internal_topics = set(internal)

    def topics(self) -> set[str]:
        return set(self._partitions) - self.internal_topics

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(self._partitions[topic]) if topic in self._partitions else None

    def available_partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions_for_topic(topic)


@settings(max_examples=500, deadline=None)
@given(
    key=keys,
    ids=st.sets(st.integers(min_value=0, max_value=200), min_size=1, max_size=20),
)
def test_partitioner_picks_what_the_default_picks(key: bytes, ids: set[int]) -> None:
    cluster = _Cluster({"t": ids})
    ours = make_partitioner().partition("t", None, key, None, b"v", cluster)
    assert ours == DefaultPartitioner().partition("t", None, key, None, b"v", cluster)


def test_partitioner_refuses_what_the_default_refuses() -> None:
    cluster = _Cluster({"t": {0, 1}, "__internal": {0}}, internal=("__internal",))
    for topic in ("missing", "__internal"):
        for partitioner in (make_partitioner(), DefaultPartitioner()):
            with pytest.raises(ValueError, match="not found"):
                partitioner.partition(topic, None, b"k", None, b"v", cluster)
    # Without a key both pick any partition of the topic.
    assert make_partitioner().partition("t", None, None, None, b"v", cluster) in {0, 1}


def test_without_the_package_the_producer_keeps_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_murmurhash2(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "murmurhash2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_murmurhash2)
    assert type(make_partitioner()) is DefaultPartitioner


def test_records_land_on_the_default_partition(kafka_broker: TansuBroker) -> None:
    config = KafkaConfig(
        bootstrap_servers=[kafka_broker.bootstrap],
        partitions=5,
        send_timeout_s=5.0,
        connect_timeout_s=2.0,
    )
    keys = [f"resp-{i}-é{'x' * (i % 7)}" for i in range(200)]
    records = [
        Record(COMPLETIONS_TOPIC if i % 2 else FEEDBACK_TOPIC, key, b'{"n":%d}' % i)
        for i, key in enumerate(keys)
    ]

    async def main() -> None:
        sink = KafkaSink(config)
        try:
            await sink.emit(records)
            # kafka-python's own metrics are off: nothing reads them, they cost per record.
            assert sink._producer.metrics() is None
        finally:
            await sink.aclose()

    asyncio.run(main())
    consumed = consume_all(kafka_broker.bootstrap, [COMPLETIONS_TOPIC, FEEDBACK_TOPIC], 200)
    assert len(consumed) == len(records)
    for record in consumed:
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % 5
    assert len({r.partition for r in consumed}) == 5
