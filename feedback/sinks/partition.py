"""The partition of a keyed record: Kafka's murmur2 partitioner, in C where it can be.

kafka-python's default partitioner hashes the key with a pure-Python murmur2 (~56 us for a
response id, once per record, holding the GIL with the event loop). This one gives the very
partitions it (and the Java client's default) gives, so a response id's completion and its
feedback land on one partition whichever client or release sent them, with the hash from the
murmurhash2 package (~0.5 us). Without that package the producer keeps kafka-python's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# murmur2 as Kafka seeds it (org.apache.kafka.common.utils.Utils.murmur2).
MURMUR2_SEED = 0x9747B28C


def _c_murmur2() -> Callable[[bytes], int] | None:
    """The C murmur2 with Kafka's seed, or None when the murmurhash2 package is absent."""
    try:
        from murmurhash2 import murmurhash2
    except ImportError:
        return None

    def murmur2(data: bytes) -> int:
        return murmurhash2(data, MURMUR2_SEED)

    return murmur2


def kafka_partition(murmur2: Callable[[bytes], int], key: bytes, partitions: int) -> int:
    """The index (into the sorted partition ids) Kafka gives `key` among `partitions`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def make_partitioner() -> Any:
    """A kafka-python partitioner equal to its default one, hashing in C when it can."""
    from kafka.partitioner import DefaultPartitioner, Partitioner

    c_murmur2 = _c_murmur2()
    if c_murmur2 is None:
        return DefaultPartitioner()
    murmur2: Callable[[bytes], int] = c_murmur2

    default = DefaultPartitioner()

    class Murmur2Partitioner(Partitioner):  # type: ignore[misc]
        """DefaultPartitioner with the hash in C; records without a key go to it as they are."""

        def partition(
            self,
            topic: str,
            key: Any,
            serialized_key: bytes | None,
            value: Any,
            serialized_value: bytes | None,
            cluster: Any,
        ) -> int:
            if serialized_key is None:
                return int(
                    default.partition(topic, key, serialized_key, value, serialized_value, cluster)
                )
            partitions = cluster.partitions_for_topic(topic)
            if partitions is None or topic in cluster.internal_topics:
                # As DefaultPartitioner: it knows only the topics cluster.topics() lists.
                raise ValueError(f"Topic {topic} not found in ClusterMetadata")
            ordered = sorted(partitions)
            return int(ordered[kafka_partition(murmur2, serialized_key, len(ordered))])

    return Murmur2Partitioner()
