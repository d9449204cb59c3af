"""A corpus of hostile Kafka records for the kit's model: whatever bytes a record holds, the
worst it may earn is a dead letter.

:func:`hostile_records` yields :class:`Hostile` records ``(name, key, value, expect)``: the
Kafka message key and value bytes, and the outcomes the scoring path may give them (``"result"``
or dead-letter reasons; more than one where either is right, e.g. a BOM that one JSON parser
skips and another refuses). The records are built for :data:`kit.models.SPEC` (features
``f0``..``f5``, key field ``id``), scored with :data:`PASSTHROUGH` passed through and the
default ``max_message_bytes``; none is over :data:`MAX_VALUE_BYTES`, so an input topic with
``max.message.bytes`` of :data:`TOPIC_MAX_MESSAGE_BYTES` takes them all, while the dead-letter
topic keeps Kafka's default limit.

Producing it: :func:`produce_corpus` (kafka-python), or with Kafka's own tools:
:func:`produce_with_console_producer` (``kafka-console-producer``, for the records that are UTF-8
lines: :func:`console_safe`) and :func:`produce_corpus_with_java` (Kafka's Java producer, any
bytes). :func:`create_corpus_topics` makes the topics.

Example:
    >>> from kit.hostile import hostile_records
    >>> names = [h.name for h in hostile_records()]
    >>> "deep_array_1100_in_ignored_field" in names and "surrogate_in_key_field" in names
    True
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from kit.models import COLUMNS, normal_rows

# The field the consumer passes through when it scores the corpus (a large one earns
# ``too_large``).
PASSTHROUGH = ("note",)
MAX_VALUE_BYTES = 1_100_000
TOPIC_MAX_MESSAGE_BYTES = 2_000_000  # for the input topic (the dead-letter topic: default)

RESULT = "result"
_NAME = object()  # the default key of a hostile record: its name


@dataclass(frozen=True)
class Hostile:
    """One hostile record.

    Attributes:
        name: what it attacks.
        key: the Kafka message key (None: no key).
        value: the Kafka message value (None: a tombstone).
        expect: the outcomes it may earn: ``"result"`` and/or dead-letter reasons.
    """

    name: str
    key: bytes | None
    value: bytes | None
    expect: frozenset[str]


def _features(i: int) -> dict[str, float]:
    row = normal_rows(1, seed=1000 + i)[0]
    return dict(zip(COLUMNS, map(float, row), strict=True))


def _good_json(i: int, **extra: object) -> str:
    """A good record's JSON text (with ``extra`` fields first), for splicing raw text into."""
    body = json.dumps({"id": i, **_features(i)})
    if not extra:
        return body
    head = json.dumps(extra)[1:-1]
    return "{" + head + ", " + body[1:]


def _with_raw(i: int, field: str, raw: str) -> bytes:
    """A good record with ``field`` holding ``raw`` JSON text (not checked: it may be bad)."""
    head = "{" + json.dumps(field) + ": " + raw + ", "
    return (head + json.dumps({"id": i, **_features(i)})[1:]).encode()


def _features_with(i: int, name: str, raw: str) -> bytes:
    """A record whose feature ``name`` holds the raw JSON text ``raw``."""
    parts = [f'"id": {i}']
    for column, value in _features(i).items():
        parts.append(f'"{column}": {raw if column == name else json.dumps(value)}')
    return ("{" + ", ".join(parts) + "}").encode()


def hostile_records() -> Iterator[Hostile]:
    """The corpus, in a fixed order (deterministic bytes)."""
    ok = frozenset({RESULT})

    def h(name: str, value: bytes | None, expect: set[str] | frozenset[str], key=_NAME):
        return Hostile(name, name.encode() if key is _NAME else key, value, frozenset(expect))

    # Nesting: beyond the JSON parsers' depth limits (RecursionError in Python's parser), in
    # a field the model ignores; within them but deeper than the serialiser's limit.
    yield h(
        "deep_array_1100_in_ignored_field", _with_raw(1, "x", "[" * 1100 + "]" * 1100), {"bad_json"}
    )
    yield h(
        "deep_object_1100_in_ignored_field",
        _with_raw(2, "x", '{"a":' * 1100 + "1" + "}" * 1100),
        {"bad_json"},
    )
    yield h("deep_array_100k", b"[" * 100_000 + b"]" * 100_000, {"bad_json"})
    yield h("deep_array_900_in_ignored_field", _with_raw(3, "x", "[" * 900 + "]" * 900), ok)
    yield h(
        "deep_array_300_passed_through",
        _with_raw(4, "note", "[" * 300 + "]" * 300),
        {RESULT, "internal"},
    )
    yield h(
        "deep_array_900_passed_through",
        _with_raw(5, "note", "[" * 900 + "]" * 900),
        {RESULT, "internal"},
    )
    # Text: lone surrogates (no UTF-8 form), invalid UTF-8, BOM, NUL, emoji, odd whitespace.
    yield h(
        "surrogate_in_key_field",
        _good_json(6).replace('"id": 6', '"id": "\\ud800"').encode(),
        {RESULT, "internal"},
    )
    yield h("surrogate_in_passed_through_field", _with_raw(7, "note", '"\\udfff\\ud800"'), ok)
    yield h("surrogate_pair_split", _with_raw(8, "x", '"\\ud83d"'), ok)
    yield h(
        "invalid_utf8_in_ignored_field",
        _with_raw(9, "x", '"a\xff"').replace(b"\xc3\xbf", b"\xff"),
        {"bad_json"},
    )
    yield h("invalid_utf8_whole_value", bytes(range(256)) * 4, {"bad_json"})
    yield h("bom_prefix", b"\xef\xbb\xbf" + _good_json(10).encode(), {RESULT, "bad_json"})
    yield h("nul_and_emoji_in_fields", _with_raw(11, "note", '"\\u0000 \\ud83d\\ude00 \u00e9"'), ok)
    yield h("whitespace_only", b" \t\r\n ", {"bad_json"})
    yield h("trailing_garbage", _good_json(12).encode() + b" xyz", {"bad_json"})
    yield h("two_objects", _good_json(13).encode() * 2, {"bad_json"})
    # Numbers: beyond float64, beyond float32, NaN/Infinity literals, -0, underflow, big ints.
    yield h("float_1e999", _features_with(14, "f0", "1e999"), {"non_finite", "bad_json"})
    yield h("float_beyond_float32", _features_with(15, "f1", "3.5e38"), {"non_finite"})
    yield h("float64_max", _features_with(16, "f2", "1.7976931348623157e308"), {"non_finite"})
    yield h("nan_literal", _features_with(17, "f3", "NaN"), {"non_finite"})
    yield h("infinity_literal", _features_with(18, "f4", "-Infinity"), {"non_finite"})
    yield h("minus_zero", _features_with(19, "f5", "-0"), ok)
    yield h("underflow_1e-400", _features_with(20, "f5", "1e-400"), ok)
    yield h("int_beyond_64_bits_feature", _features_with(21, "f0", str(2**70)), ok)
    yield h(
        "int_4000_digits_feature", _features_with(22, "f0", "9" * 4000), {"non_finite", "bad_json"}
    )
    yield h(
        "int_5000_digits_feature", _features_with(23, "f0", "9" * 5000), {"non_finite", "bad_json"}
    )
    yield h(
        "int_beyond_64_bits_key", _good_json(24).replace('"id": 24', f'"id": {2**80}').encode(), ok
    )
    yield h("bool_feature", _features_with(25, "f1", "true"), {"non_numeric"})
    yield h("string_feature", _features_with(26, "f2", '"1.5"'), {"non_numeric"})
    yield h("null_feature", _features_with(27, "f3", "null"), {"non_numeric"})
    # Shapes: empty, tombstone, non-objects, duplicate keys, odd keys, many fields.
    yield h("empty_value", b"", {"bad_json"})
    yield h("tombstone", None, {"not_object", "bad_json"})
    for kind, raw in (
        ("null", b"null"),
        ("number", b"42"),
        ("string", b'"x"'),
        ("array", b"[1, 2]"),
        ("true", b"true"),
    ):
        yield h(f"json_{kind}", raw, {"not_object"})
    yield h(
        "duplicate_feature_last_bad", _features_with(28, "f0", '1.0, "f0": "x"'), {"non_numeric"}
    )
    yield h("duplicate_feature_last_good", _features_with(29, "f0", '"x", "f0": 1.0'), ok)
    yield h(
        "key_field_is_a_list", _good_json(30).replace('"id": 30', '"id": [1, [2]]').encode(), ok
    )
    yield h(
        "key_field_is_an_object",
        _good_json(31).replace('"id": 31', '"id": {"a": {"b": 1}}').encode(),
        ok,
    )
    yield h("key_field_missing", json.dumps(_features(32)).encode(), ok)
    yield h("missing_feature", json.dumps({"id": 33, "f0": 1.0}).encode(), {"missing_field"})
    yield h(
        "ten_thousand_fields",
        _with_raw(34, "x", "0").replace(
            b'"x": 0, ', b"".join(b'"g%d": %d, ' % (j, j) for j in range(10_000))
        ),
        ok,
    )
    yield h("long_field_name_100k", _with_raw(35, "y" * 100_000, "1"), ok)
    # Kafka keys: none, invalid UTF-8, very long.
    yield h("no_kafka_key", _good_json(36).encode(), ok, key=None)
    yield h("invalid_utf8_kafka_key", _good_json(37).encode(), ok, key=b"\xff\xfe\x00k")
    yield h("kafka_key_100k", _good_json(38).encode(), ok, key=b"k" * 100_000)
    # Size: results and dead letters near the 1 MB limits.
    big = "z" * 1_000_000
    yield h("one_mb_string_in_ignored_field", _with_raw(39, "x", json.dumps(big)), ok)
    yield h(
        "one_mb_record_missing_a_feature",
        json.dumps({"id": 40, "x": big}).encode(),
        {"missing_field"},
    )
    yield h("one_mb_bad_json", b"{" + b"z" * 1_050_000, {"bad_json"})
    yield h("one_mb_passed_through", _with_raw(41, "note", json.dumps(big)), {"too_large"})


def create_corpus_topics(bootstrap: str, *, partitions: int = 2) -> tuple[str, str, str]:
    """Fresh ``(input, output, dead letter)`` topics: the input takes records up to
    :data:`TOPIC_MAX_MESSAGE_BYTES`; the outputs keep Kafka's default limit (about 1 MB)."""
    import uuid

    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from ae_pipeline.kafka import create_topics

    tag = uuid.uuid4().hex[:8]
    inp, out, dlq = f"hostile-in-{tag}", f"hostile-out-{tag}", f"hostile-dlq-{tag}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        limit = {"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)}
        admin.create_topics([NewTopic(inp, partitions, 1, topic_configs=limit)])
    finally:
        admin.close()
    create_topics({"bootstrap.servers": bootstrap}, {inp: partitions, out: 1, dlq: 1})
    return inp, out, dlq


def produce_corpus(bootstrap: str, topic: str, corpus: list[Hostile]) -> None:
    """Produces the corpus (kafka-python, its request size raised for the ~1 MB records)."""
    from ae_pipeline.kafka import create_producer

    config = {
        "bootstrap.servers": bootstrap,
        "kafka_python": {"max_request_size": TOPIC_MAX_MESSAGE_BYTES},
    }
    with create_producer(config) as producer:
        for h in corpus:
            producer.send(topic, h.value, key=h.key)
        producer.flush(60)


# Kafka's own Java producer (kafka-clients, from the broker's classpath), run as a single-file
# Java program: ``base64(key) base64(value)`` lines on stdin ("-": none), one record each.
_JAVA_PRODUCER = """
import java.io.*;
import java.util.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class HostileProducer {
  public static void main(String[] args) throws Exception {
    Properties p = new Properties();
    p.put("bootstrap.servers", args[0]);
    p.put("acks", "all");
    p.put("max.request.size", args[2]);
    p.put("key.serializer", ByteArraySerializer.class.getName());
    p.put("value.serializer", ByteArraySerializer.class.getName());
    Base64.Decoder b64 = Base64.getDecoder();
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in), 1 << 22);
    int n = 0;
    try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p)) {
      for (String line; (line = in.readLine()) != null; ) {
        String[] kv = line.split(" ", -1);
        byte[] key = kv[0].equals("-") ? null : b64.decode(kv[0]);
        byte[] value = kv[1].equals("-") ? null : b64.decode(kv[1]);
        producer.send(new ProducerRecord<>(args[1], key, value)).get();
        n++;
      }
      producer.flush();
    }
    System.out.println("produced " + n);
  }
}
"""


def console_safe(h: Hostile) -> bool:
    """Whether Kafka's console producer can write ``h`` as it is: a key and a value that are
    UTF-8 text without line breaks (it reads lines), the key without a tab (the separator)."""
    if h.key is None or h.value is None or b"\t" in h.key:
        return False
    for part in (h.key, h.value):
        if b"\n" in part or b"\r" in part:
            return False
        try:
            part.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


def produce_with_console_producer(bootstrap: str, topic: str, corpus: list[Hostile]) -> None:
    """Produces the :func:`console_safe` records of ``corpus`` with Kafka's own
    ``kafka-console-producer`` (``org.apache.kafka.tools.ConsoleProducer`` of the
    ``kafka_tools`` classpath, fetched by ``deploy/local/fetch_jars.py``), ``key<TAB>value``
    lines.

    Raises:
        ValueError: a record in ``corpus`` is not console-safe.
        subprocess.CalledProcessError: the producer failed (its stderr in the message).
    """
    import subprocess

    from ae_pipeline.local.paths import classpath

    unsafe = [h.name for h in corpus if not console_safe(h)]
    if unsafe:
        raise ValueError(f"the console producer cannot write {unsafe}")
    lines = b"".join(h.key + b"\t" + h.value + b"\n" for h in corpus)
    cmd = ["java", "-Xmx512m", "-Dfile.encoding=UTF-8", "-cp", classpath("kafka_tools")]
    cmd += ["org.apache.kafka.tools.ConsoleProducer", "--bootstrap-server", bootstrap]
    cmd += ["--topic", topic, "--request-required-acks", "all"]
    cmd += ["--property", "parse.key=true", "--property", "key.separator=\t"]
    cmd += ["--producer-property", f"max.request.size={TOPIC_MAX_MESSAGE_BYTES}"]
    done = subprocess.run(cmd, input=lines, capture_output=True, timeout=300)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(
            done.returncode, cmd[:1], done.stdout, done.stderr.decode()[-3000:]
        )


def produce_corpus_with_java(bootstrap: str, topic: str, corpus: list[Hostile], folder) -> str:
    """Produces the corpus with Kafka's own Java producer (``kafka-clients`` of the broker's
    classpath; a single-file Java program, JDK 11+); returns its output line.

    Raises:
        subprocess.CalledProcessError: the producer failed (its stderr in the message).
    """
    import base64
    import subprocess
    from pathlib import Path

    from ae_pipeline.local.paths import classpath

    source = Path(folder) / "HostileProducer.java"
    source.write_text(_JAVA_PRODUCER)

    def b64(data: bytes | None) -> str:
        return "-" if data is None else base64.b64encode(data).decode()

    lines = "".join(f"{b64(h.key)} {b64(h.value)}\n" for h in corpus)
    cmd = ["java", "-Xmx512m", "-cp", classpath("kafka"), str(source)]
    cmd += [bootstrap, topic, str(TOPIC_MAX_MESSAGE_BYTES)]
    done = subprocess.run(cmd, input=lines.encode(), capture_output=True, timeout=300)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(
            done.returncode, cmd[:1], done.stdout, done.stderr.decode()[-3000:]
        )
    return done.stdout.decode().strip().splitlines()[-1]
