"""Every kind of version that cannot serve, at once, while threads score: the guarantee
"no version that cannot serve is ever served" attacked from all sides together.

A background :class:`ModelWatcher` (as the Beam DoFns and the consumer use it on a quiet topic)
follows a root while two threads score without pause. Every hostile version of
``tests/test_hot_reload.py`` lands in the root in one burst, newer than the good version; then
the good version is removed (rollback), and finally a good version is published. Every batch is
scored whole by a good version, each hostile version is refused exactly once with its reason,
and the last good version is picked up without a record arriving.
"""

from __future__ import annotations

import collections
import shutil
import threading
import time

import reliability_kit as rel
from test_hot_reload import BAD, RECORD, publish

from ae_pipeline.hot_reload import ModelWatcher
from ae_pipeline.registry import ModelRegistry


def _wait_for(predicate, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_burst_of_hostile_versions_never_serves_while_scoring(tmp_path):
    root = str(tmp_path / "models")
    reg = ModelRegistry(root)
    first = publish(root)
    good = {first}
    stop = threading.Event()
    errors: list[BaseException] = []
    scored: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    watcher = ModelWatcher(
        root, interval_s=0.02, background=True, mode="flag", device="cpu", retry_base_s=3600
    )

    def score() -> None:
        try:
            while not stop.is_set():
                model = watcher.current()
                results, dead = model.score_records([RECORD] * 8, "flag")
                assert not dead and {r["model_version"] for r in results} == {model.version}
                with lock:
                    scored[model.version] += len(results)
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=score, daemon=True) for _ in range(2)]
    try:
        _wait_for(lambda: watcher.version == first, "the first version")
        for t in threads:
            t.start()
        second = publish(root)
        good.add(second)
        _wait_for(lambda: watcher.version == second, "the second version")
        hostile = {kind: make(root) for kind, (make, _, _) in BAD.items()}
        _wait_for(lambda: set(hostile.values()) <= set(watcher.failed), "every refusal")
        shutil.rmtree(reg.path(second))  # the served version disappears: roll back
        _wait_for(lambda: watcher.version == first, "the rollback")
        last = publish(root)
        good.add(last)
        _wait_for(lambda: watcher.version == last, "the last good version")
        with lock:
            before = sum(scored.values())
        _wait_for(lambda: sum(scored.values()) > before, "scoring with the last version")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        watcher.close()
    assert not errors, errors
    assert set(scored) <= good and scored[last] > 0
    assert watcher.refusals == collections.Counter(reason for _, reason, _ in BAD.values())
    for kind, version in hostile.items():
        assert watcher.failed[version].startswith(f"{BAD[kind][1]}: "), kind
    assert watcher.rollbacks == 1 and watcher.swaps == 4
    rel.report_fault(
        f"{len(BAD)} kinds of version that cannot serve, published in one burst",
        "ModelWatcher (background), 2 scoring threads",
        records_in=sum(scored.values()),
        records_out=sum(scored.values()),
        duplicated=0,
        lost=0,
        refused=len(hostile),
    )
