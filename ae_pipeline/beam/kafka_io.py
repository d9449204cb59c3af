"""Kafka in Beam pipelines, in Python, with either Kafka client: the names of
:mod:`ae_pipeline.beam.kafka_read` (:class:`ReadKafkaRecords`), :mod:`ae_pipeline.beam.kafka_write`
(:class:`WriteKafkaRecords`) and :mod:`ae_pipeline.beam.kafka_xlang` (Beam's Java KafkaIO:
:func:`java_read`, :func:`java_write`) in one place, as they were before those modules were
split. New code imports from :mod:`ae_pipeline.beam` (or from the module itself).
"""

from ae_pipeline.beam.kafka_partitions import MAX_OFFSET, STARTS, KafkaRecordCoder, PartitionToRead
from ae_pipeline.beam.kafka_read import ReadKafkaRecords
from ae_pipeline.beam.kafka_write import WriteKafkaRecords, message_size
from ae_pipeline.beam.kafka_xlang import java_read, java_write

__all__ = [
    "MAX_OFFSET",
    "STARTS",
    "KafkaRecordCoder",
    "PartitionToRead",
    "ReadKafkaRecords",
    "WriteKafkaRecords",
    "java_read",
    "java_write",
    "message_size",
]
