"""A state file's key lists (a group number and a destination text per baseline, ~13 MB at a
million) are parsed a piece at a time, so the thread restoring a large state never holds the
interpreter's lock (and the event loop beside it) through all of them; the result is always
what parsing the file whole gives, or the file is parsed whole."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from egressd.app import Daemon
from egressd.baseline import statefile
from egressd.baseline.statefile import parse_state
from egressd.config import parse_config
from tests.integration_support import research_config
from tests.test_daemon_app import T0, flow

#: destination texts with what a cut must not split: escaped quotes around a comma (the
#: texts' separator, escaped), commas, backslashes, a quote at either end, non-ASCII
AWKWARD = ['a","b', "x,y", "\\", '\\",\\"', '"', "GB|Zürich|0", ",", '","', ""]


def state_blob(dests: list[str], tail: bytes = b"") -> bytes:
    """A state in the layout :func:`statefile.encode_state` writes (records last)."""
    head = {
        "version": 2,
        "event_time": T0,
        "windows": {"k": [1, 2, 3]},
        "baselines": {
            "format": 2,
            "groups": ["research", "other"],
            "group": [n % 2 for n in range(len(dests))],
            "dests": dests,
        },
    }
    text = orjson.dumps(head)
    assert text.endswith(b"]}}")
    return text[:-2] + tail + b',"records":"QUJD"}}'


def loads_watched(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each text orjson parses from now on."""
    sizes: list[int] = []
    loads = orjson.loads

    def watched(text: Any) -> Any:
        sizes.append(len(text))
        return loads(text)

    monkeypatch.setattr(statefile.orjson, "loads", watched)
    return sizes


@pytest.mark.parametrize("piece", [1, 7, 64, 1 << 18])
def test_the_key_lists_parsed_in_pieces_are_what_the_whole_parse_gives(
    monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    monkeypatch.setattr(statefile, "LIST_PIECE", piece)
    for dests in (
        [f"US|{n}|{n}" for n in range(500)],
        AWKWARD * 20,
        [],
        ["only"],
    ):
        blob = state_blob(dests)
        assert parse_state(blob) == orjson.loads(blob)
        parsed = parse_state(blob)
        assert list(parsed) == list(orjson.loads(blob))
        assert list(parsed["baselines"]) == list(orjson.loads(blob)["baselines"])


def test_a_large_key_list_is_never_parsed_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statefile, "LIST_PIECE", 4096)
    dests = [f"DE|region {n}|{n}" for n in range(20_000)]
    blob = state_blob(dests)
    sizes = loads_watched(monkeypatch)
    assert parse_state(blob) == orjson.loads(blob)
    lists = len(orjson.dumps(dests))
    assert lists > 100 * 4096
    assert max(sizes[:-1]) < 2 * 4096 and len(sizes) > 100  # (the last: the test's own)


@pytest.mark.parametrize(
    "tail",
    [
        b',"dests":1',  # another member after the lists
        b',"x":[1]',  # a list after them that is none of theirs
    ],
)
def test_a_head_not_ending_in_the_key_lists_is_parsed_whole(
    monkeypatch: pytest.MonkeyPatch, tail: bytes
) -> None:
    monkeypatch.setattr(statefile, "LIST_PIECE", 8)
    blob = state_blob([f"US|{n}|{n}" for n in range(100)], tail)
    sizes = loads_watched(monkeypatch)
    expected = orjson.loads(blob)
    sizes.clear()
    assert parse_state(blob) == expected
    assert max(sizes) >= len(blob) - len(b',"records":"QUJD"}}')  # the head, whole


@pytest.mark.parametrize(
    "lists",
    [
        b'"group":[0,1,],"dests":["a","b"]',  # a trailing comma
        b'"group":[0,1],"dests":["a","b",]',
        b'"group":[0,1],"dests":["a""b"]',
        b'"group":[0,,1],"dests":["a","b"]',
        b'"group":[0,1],"dests":["a",,"b"]',
        b'"group":[,0,1],"dests":["a","b"]',
        b'"group":[0,1],"dests":[,"a","b"]',
    ],
)
def test_key_lists_that_are_no_json_are_refused_as_the_whole_parse_refuses_them(
    monkeypatch: pytest.MonkeyPatch, lists: bytes
) -> None:
    monkeypatch.setattr(statefile, "LIST_PIECE", 1)
    blob = b'{"version":2,"baselines":{"format":2,"groups":["g"],' + lists + b',"records":"QUJD"}}'
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(blob)
    with pytest.raises(orjson.JSONDecodeError):
        parse_state(blob)


@pytest.mark.parametrize("piece", [1, 3])
def test_any_damage_to_the_key_lists_is_read_as_the_whole_parse_reads_it(
    monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    """Characters that matter to JSON, inserted or deleted at random in the lists: the file
    parses the same way, or fails the same way, as when parsed whole."""
    monkeypatch.setattr(statefile, "LIST_PIECE", piece)
    rng = random.Random(piece)
    texts = ["a", "b\\", ",", '\\",\\', '","']
    lists = b'"group":[0,1,0,1,0],"dests":' + orjson.dumps(texts)
    same = 0
    for _ in range(3000):
        damaged = bytearray(lists)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(damaged))
            if rng.random() < 0.5:
                del damaged[at]
            else:
                damaged.insert(at, rng.choice(b'",[]\\0 :'))
        blob = b'{"version":2,"baselines":{"format":2,' + bytes(damaged) + b',"records":"QUJD"}}'
        try:
            whole: Any = orjson.loads(blob)
        except orjson.JSONDecodeError:
            whole = orjson.JSONDecodeError
        try:
            pieces: Any = parse_state(blob)
        except orjson.JSONDecodeError:
            pieces = orjson.JSONDecodeError
        assert pieces == whole, bytes(damaged)
        same += whole is not orjson.JSONDecodeError
    assert same > 100  # (some damage leaves valid JSON: those parse alike too)


async def test_a_state_restored_with_its_key_lists_in_pieces_is_the_state_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state.json"
    config = parse_config(research_config(state=str(state)))
    first = Daemon(config, environ={}, sources=[])
    first.restore_state()
    for step in range(4):
        first.feed.submit(
            [
                flow("10.20.0.17", dst, 2_000_000 + step, T0 + 300 * step + 100)
                for dst in ("81.2.69.160", "47.100.23.45", "8.8.8.8", "1.1.1.1", "5.9.0.1")
            ]
        )
    assert await first.save()
    monkeypatch.setattr(statefile, "LIST_PIECE", 1)
    sizes = loads_watched(monkeypatch)
    second = Daemon(config, environ={}, sources=[])
    await second.restore_state_off_loop()
    assert len(second.engine.baselines) == len(first.engine.baselines) >= 4
    assert list(second.baselines(None)) == list(first.baselines(None))
    assert len(sizes) > len(first.engine.baselines)  # (a piece per key at this size)
