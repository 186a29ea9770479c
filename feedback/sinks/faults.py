"""What a Kafka producer error means for one record: retry it, cut it, or set it aside (pure).

kafka-python raises some errors from `send()` (client-side checks) and fails the record's
future with others (the broker's answer, or the client giving up). Each maps to one verdict:

- TRANSIENT: the cluster or the network, not the record (timeouts, no leader, not enough
  replicas, connections, and any error the client marks retriable). The batch stays in the
  spool and is retried with backoff; nothing is lost.
- TOO_LARGE: the record is over the producer's or the broker's size limit: cut its content
  (feedback.truncation) and send it again; set it aside if it still does not fit.
- a permanent reason (INVALID_TOPIC, UNAUTHORIZED, UNSERIALISABLE, INVALID_RECORD): the
  record can never be delivered as it is; it goes to the dead-letter spool.
- UNKNOWN: a non-retriable error that names nothing about the record. It is the record's
  fault only when other records of the same send got through (REJECTED); otherwise the
  cluster is treated as unavailable.
"""

from __future__ import annotations

import re

TRANSIENT = "transient"
TOO_LARGE = "too_large"
INVALID_TOPIC = "invalid_topic"
UNAUTHORIZED = "unauthorized"
UNSERIALISABLE = "unserialisable"
INVALID_RECORD = "invalid_record"
REJECTED = "rejected"
UNKNOWN = "unknown"

# Label values of loopgate_events_dead_lettered_total{reason} (UNKNOWN becomes REJECTED).
DEAD_LETTER_REASONS = (TOO_LARGE, INVALID_TOPIC, UNAUTHORIZED, UNSERIALISABLE, INVALID_RECORD,
                       REJECTED)  # fmt: skip

_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")

# By class name, so the table reads without importing the client (and survives its moves).
_BY_NAME = {
    "MessageSizeTooLargeError": TOO_LARGE,
    "RecordListTooLargeError": TOO_LARGE,
    "InvalidTopicError": INVALID_TOPIC,
    "TopicAuthorizationFailedError": UNAUTHORIZED,
    "CorruptRecordError": INVALID_RECORD,
    "InvalidRecordError": INVALID_RECORD,
    "InvalidTimestampError": INVALID_RECORD,
    "UnsupportedForMessageFormatError": INVALID_RECORD,
    "PolicyViolationError": INVALID_RECORD,
    # Not marked retriable by kafka-python, but about the broker, not the record.
    "BrokerNotAvailableError": TRANSIENT,
    "KafkaTimeoutError": TRANSIENT,
    "RequestTimedOutError": TRANSIENT,
    "KafkaConnectionError": TRANSIENT,
    "NodeNotReadyError": TRANSIENT,
    "LeaderNotAvailableError": TRANSIENT,
    "NotLeaderForPartitionError": TRANSIENT,
    "UnknownTopicOrPartitionError": TRANSIENT,
    "NotEnoughReplicasError": TRANSIENT,
    "NotEnoughReplicasAfterAppendError": TRANSIENT,
    "KafkaStorageError": TRANSIENT,
    "ThrottlingQuotaExceededError": TRANSIENT,
    "IllegalStateError": TRANSIENT,  # a producer closed under us: a fresh one will do
    # Producer-wide: everything fails alike until an operator acts, so never set aside.
    "ClusterAuthorizationFailedError": TRANSIENT,
    "TransactionalIdAuthorizationFailedError": TRANSIENT,
    "SaslAuthenticationFailedError": TRANSIENT,
    "UnsupportedVersionError": TRANSIENT,
    "OutOfOrderSequenceNumberError": TRANSIENT,
    "UnknownProducerIdError": TRANSIENT,
    "InvalidProducerEpochError": TRANSIENT,
    "ProducerFencedError": TRANSIENT,
}


def valid_topic(topic: str) -> bool:
    """Kafka's rule for topic names (what kafka-python checks before it sends)."""
    return bool(_TOPIC.fullmatch(topic)) and topic not in (".", "..")


def classify(exc: BaseException) -> str:
    """The verdict for one record's error (see the module docstring)."""
    for cls in type(exc).__mro__:
        verdict = _BY_NAME.get(cls.__name__)
        if verdict is not None:
            return verdict
    if getattr(exc, "retriable", False):
        return TRANSIENT
    if isinstance(exc, (TypeError, ValueError, UnicodeError)):
        return UNSERIALISABLE  # the client's own checks of a key, value or header
    return UNKNOWN
