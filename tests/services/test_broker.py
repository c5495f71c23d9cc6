"""The embedded broker (``filesystem://``): a message appears whole or not
at all, two consumers never take the same one, a message that cannot be
decoded is skipped instead of killing the worker, and a message claimed by
a process that died unacknowledged goes back to the queue. Regression: a Celery
worker of ``pacs up`` died of ``JSONDecodeError`` after taking a message
file that kombu's filesystem transport had created but not yet written."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from queue import Empty

import pytest

from services import broker
from services.settings import load_settings
from services.tasks import make_celery


def _channel(data_dir: Path):  # noqa: ANN202
    app = make_celery(load_settings(data_dir=data_dir))
    conn = app.connection_for_write()
    return conn, conn.default_channel


def _get(channel, queue: str) -> dict | None:  # noqa: ANN001
    try:
        return channel._get(queue)
    except Empty:
        return None


def test_make_celery_uses_this_transport(tmp_path: Path) -> None:
    conn, channel = _channel(tmp_path)
    with conn:
        assert isinstance(channel, broker.Channel)


def test_a_slow_writer_never_exposes_a_partial_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_write(f, data: bytes) -> None:  # noqa: ANN001 - the writer stalls halfway (a loaded machine)
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(0.5)
        f.write(data[len(data) // 2:])

    monkeypatch.setattr(broker, "_write", slow_write)
    conn, channel = _channel(tmp_path)
    seen: list[object] = []
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            try:
                message = _get(channel, "db")
            except Exception as exc:  # noqa: BLE001 - what a worker would die of
                seen.append(exc)
                return
            if message is not None:
                seen.append(message)
                return

    with conn:
        reader = threading.Thread(target=consume)
        reader.start()
        channel._put("db", {"body": "x" * 10_000, "n": 1})
        reader.join(5)
        stop.set()
    assert len(seen) == 1 and isinstance(seen[0], dict), seen
    assert seen[0] == {"body": "x" * 10_000, "n": 1}
    assert not list((tmp_path / "broker" / "queue").iterdir()), "nothing left behind"


def test_an_undecodable_message_is_skipped(tmp_path: Path) -> None:
    conn, channel = _channel(tmp_path)
    with conn:
        channel._put("db", {"n": 2})
        queue = tmp_path / "broker" / "queue"
        (queue / "1_00000000-0000-0000-0000-000000000000.db.msg").write_bytes(b"")  # older, empty
        assert _get(channel, "db") == {"n": 2}
        assert _get(channel, "db") is None
        assert not list(queue.iterdir()) and not list((tmp_path / "broker" / "processed").glob("*.msg"))


def _consume_all(data_dir: str, out: multiprocessing.Queue) -> None:
    conn, channel = _channel(Path(data_dir))
    got, idle = [], 0
    with conn:
        while idle < 20:
            message = _get(channel, "db")
            if message is None:
                idle += 1
                time.sleep(0.05)
                continue
            idle = 0
            got.append(message["n"])
    out.put(got)


def test_two_consumers_never_take_the_same_message(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    conn, channel = _channel(tmp_path)
    with conn:
        for n in range(300):
            channel._put("db", {"n": n})
    consumers = [ctx.Process(target=_consume_all, args=(str(tmp_path), out)) for _ in range(2)]
    for p in consumers:
        p.start()
    taken = [out.get(timeout=60) for _ in consumers]
    for p in consumers:
        p.join(10)
    everything = sorted(taken[0] + taken[1])
    assert everything == list(range(300)), "each message taken exactly once"


def _message(n: int) -> dict:
    return {"body": str(n), "properties": {"delivery_tag": f"tag-{n}", "delivery_info": {}}, "n": n}


def _claim_and_die(data_dir: str, ready: multiprocessing.Event) -> None:  # noqa: ANN001
    conn, channel = _channel(Path(data_dir))
    assert _get(channel, "curator")["n"] == 1
    ready.set()
    time.sleep(60)  # killed before it acknowledges


def test_a_message_claimed_by_a_killed_process_goes_back_to_the_queue(tmp_path: Path) -> None:
    conn, channel = _channel(tmp_path)
    with conn:
        channel._put("curator", _message(1))
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        worker = ctx.Process(target=_claim_and_die, args=(str(tmp_path), ready))
        worker.start()
        assert ready.wait(60)
        processed = tmp_path / "broker" / "processed"
        assert len(list(processed.glob("*.msg"))) == 1, "claimed, not deleted, until acknowledged"
        # while its process lives, nobody takes the claim away
        assert broker.recover_claims(str(processed), str(tmp_path / "broker" / "queue")) == 0
        worker.kill()
        worker.join(10)
        assert broker.recover_claims(str(processed), str(tmp_path / "broker" / "queue")) == 1
        again = _get(channel, "curator")
        assert again is not None and again["n"] == 1
        assert _get(channel, "curator") is None, "put back once"
        assert not [p for p in processed.iterdir() if p.name.endswith(".owner") and broker._MARK not in p.name]


def test_an_acknowledged_message_leaves_no_claim(tmp_path: Path) -> None:
    conn, channel = _channel(tmp_path)
    with conn:
        channel._put("db", _message(7))
        assert _get(channel, "db")["n"] == 7
        processed = tmp_path / "broker" / "processed"
        assert len(list(processed.glob("*.msg"))) == 1
        channel.basic_ack("tag-7")
        assert not list(processed.glob("*.msg"))
