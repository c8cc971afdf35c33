"""The batch decoder gives what the per-record decoder gives: the same events (fields set
included) and the same dead letters, reason for reason, on valid and malformed records."""

import random

import orjson
import pytest

from streamadapt.events import (
    DeadLetter,
    Impression,
    Label,
    LinkLoadSample,
    Position,
    decode_many,
    decode_one,
)

#: Raw JSON tokens a record may carry in place of a value (orjson cannot write them).
RAW = ("NaN", "Infinity", "-Infinity", "1e999", "-1e999", "123456789012345678901234567890",
       "18446744073709551615", "-9223372036854775809", "true", "false", "null", "-0", "0",
       "1", "2", "0.5", "-1", "-1e-300", '"1.5"', '"heavy"', '""', "[]", "{}", "[1]",
       '{"a": 1}', '{"a": "x"}', '{"a": NaN}', '{"a": true}', '{"": 1.0}', '"-"',
       '" padded "', '"\\u00e9t\\u00e9"', '"\\ud800"', '"' + "x" * 256 + '"',
       '"' + "x" * 257 + '"', '"' + "\u00e9" * 256 + '"')

LINK = {"kind": "link_load", "event_id": "e1", "link_id": "A-B", "timestamp": 1.5,
        "load": 2.25, "covariates": {"cap": 10.0}}
IMPRESSION = {"kind": "impression", "event_id": "i1", "user_id": "u", "item_id": "m",
              "timestamp": 3, "categorical": {"genre": "x"}, "numeric": {"price": 1.5},
              "label": 1}
LABEL = {"kind": "label", "event_id": "i1", "label": 0, "timestamp": 4.0, "key": "u"}
BASES = {"forecast": (LINK,), "ctr": (IMPRESSION, LABEL)}

CORPUS = [
    b"",
    b"   ",
    b"{not json",
    b'{"event_id": "e"',
    b"\xff\xfe{}",
    b'{"event_id": "\xff"}',
    b"[1, 2]",
    b'"a string"',
    b"42",
    b"null",
    b"{}",
    b'{"kind": "tweet", "event_id": "e"}',
    b'{"kind": 5, "event_id": "e", "link_id": "l", "timestamp": 1, "load": 1}',
    b'{"kind": null, "event_id": "e", "link_id": "l", "timestamp": 1, "load": 1}',
    b'{"kind": "impression", "event_id": "e", "user_id": "u", "item_id": "m", "timestamp": 1}',
    b'{"kind": "label", "event_id": "e", "label": 1, "timestamp": 1}',
    b'{"event_id": "e", "link_id": "a", "timestamp": 1, "load": NaN}',
    b'{"event_id": "e", "link_id": "a", "timestamp": 1, "load": 1e999}',
    b'{"event_id": "e", "link_id": "a", "timestamp": 1, "load": -1}',
    b'{"event_id": "e", "link_id": "a", "timestamp": 1, "load": "heavy"}',
    b'{"event_id": "e", "link_id": "a", "timestamp": "1.5", "load": "2"}',
    b'{"event_id": "e", "link_id": "a", "timestamp": true, "load": 0}',
    b'{"event_id": "e", "link_id": "a", "timestamp": 1}',
    b'{"event_id": "e", "timestamp": 1, "load": 1}',
    b'{"event_id": "", "link_id": "a", "timestamp": 1, "load": 1}',
    b'{"event_id": "e", "link_id": "a", "timestamp": 1, "load": 1, "extra": 1}',
    b'{"event_id": "e", "link_id": "a", "timestamp": 1, "load": 1, "covariates": {"x": null}}',
    b'{"event_id": "e", "link_id": "a", "timestamp": 1, "load": 1, "load": -2}',
    orjson.dumps({**LINK, "event_id": "x" * 257}),
    orjson.dumps({**LINK, "link_id": "x" * 256}),
    b"x" * 5000,
    orjson.dumps({**LINK, "covariates": {f"c{i}": float(i) for i in range(400)}}),
]
CTR_CORPUS = [
    b'{"event_id": "i", "user_id": "u", "item_id": "m", "timestamp": 2}',
    b'{"event_id": "i", "label": 1, "timestamp": 2}',
    b'{"event_id": "i", "label": 1, "timestamp": 2, "key": ""}',
    b'{"event_id": "i", "user_id": "u", "timestamp": 2}',
    b'{"event_id": "i", "user_id": "u", "item_id": "m", "timestamp": 2, "label": 2}',
    b'{"event_id": "i", "user_id": "u", "item_id": "m", "timestamp": 2, "label": 0.5}',
    b'{"event_id": "i", "user_id": "u", "item_id": "m", "timestamp": 2, "label": true}',
    b'{"event_id": "i", "user_id": "u", "item_id": "m", "timestamp": 2, "label": "1"}',
    b'{"event_id": "i", "user_id": "u", "item_id": "m", "timestamp": 2, "label": 1.0}',
    b'{"event_id": "i", "user_id": "u", "item_id": "m", "timestamp": 2,'
    b' "categorical": {"g": 3}}',
    b'{"event_id": "i", "user_id": "u", "item_id": "m", "timestamp": 2,'
    b' "numeric": {"p": "1"}}',
    b'{"kind": "link_load", "event_id": "e", "link_id": "a", "timestamp": 1, "load": 1}',
    b'{"event_id": "i", "label": Infinity, "timestamp": 2}',
    b'{"event_id": "i", "label": 1, "timestamp": 2, "key": null}',
]
MAX_BYTES = 4096  # small, so that oversized records are cheap to make


def _same(task, values, max_bytes=MAX_BYTES):
    positions = [Position("topic", i % 3, 100 + i) for i in range(len(values))]
    batch = decode_many(values, positions, task=task, max_bytes=max_bytes)
    one = [decode_one(v, task=task, position=p, max_bytes=max_bytes)
           for v, p in zip(values, positions, strict=True)]
    assert len(batch) == len(one)
    for v, got, want in zip(values, batch, one, strict=True):
        assert type(got) is type(want), v
        assert got == want, v
        if isinstance(want, DeadLetter):
            assert got.reason == want.reason and got.position == want.position, v
        else:
            assert got.model_fields_set == want.model_fields_set, v
            assert got.model_dump() == want.model_dump(), v
    return batch


@pytest.mark.parametrize("task", ["forecast", "ctr"])
def test_the_corpus_of_bad_records_gives_the_same_dead_letters(task):
    values = CORPUS + CTR_CORPUS
    out = _same(task, values)
    assert sum(isinstance(o, DeadLetter) for o in out) > len(values) // 2
    reasons = {o.reason.split(":")[0].split(" '")[0] for o in out if isinstance(o, DeadLetter)}
    assert {"oversized", "malformed json", "not an object", "validation error"} <= reasons


def test_each_kind_decodes_to_the_same_event():
    for task, bases in BASES.items():
        values = [orjson.dumps(b) for b in bases]
        values += [orjson.dumps({k: v for k, v in b.items() if k != "kind"}) for b in bases]
        out = _same(task, values)
        assert all(not isinstance(o, DeadLetter) for o in out)
    out = decode_many([orjson.dumps(LINK)], task="forecast")
    assert isinstance(out[0], LinkLoadSample) and out[0].timestamp == 1.5
    out = decode_many([orjson.dumps(IMPRESSION), orjson.dumps(LABEL)], task="ctr")
    assert isinstance(out[0], Impression) and isinstance(out[1], Label)
    assert isinstance(out[0].timestamp, float) and out[0].label == 1


def _mutate(rng, base):
    """A variant of ``base``: valid, or broken in one or a few of many ways."""
    rec = dict(base)
    raw: dict[str, str] = {}
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        op = rng.randrange(7)
        field = rng.choice([*rec, "extra", "kind", "key", "load", "label"])
        if op == 0 and rec:
            rec.pop(rng.choice(list(rec)))
        elif op == 1:
            raw[field] = rng.choice(RAW)
            rec[field] = f"__raw_{field}__"
        elif op == 2:
            rec[field] = rng.choice(["link_load", "impression", "label", "tweet", "", 7])
        elif op == 3:
            rec["event_id"] = "".join(rng.choice("ab\u00e9 ") for _ in range(rng.choice(
                (0, 1, 255, 256, 257))))
        elif op == 4:
            rec[rng.choice(["covariates", "numeric", "categorical"])] = {
                "k": rng.choice([1.0, -3, "x", None, True, [1]])}
        elif op == 5:
            rec[field] = rng.uniform(-1e6, 1e6) if rng.random() < 0.7 else rng.randint(-9, 9)
        else:
            rec["timestamp"] = rng.choice([0, 1.0, -1.5, 2**53, "3", None])
    data = orjson.dumps(rec)
    for field, token in raw.items():
        data = data.replace(orjson.dumps(f"__raw_{field}__"), token.encode())
    roll = rng.random()
    if roll < 0.03:
        data = data[: rng.randrange(len(data) + 1)]
    elif roll < 0.05:
        data = b"[" + data + b"]"
    elif roll < 0.07:
        data = data + b" " * MAX_BYTES
    elif roll < 0.08:
        data = data.replace(b'"', b"'", 1)
    return data


@pytest.mark.parametrize("seed", range(6))
def test_random_records_decode_the_same_in_a_batch_and_one_by_one(seed):
    rng = random.Random(seed)
    for task, bases in BASES.items():
        others = [b for t, bs in BASES.items() if t != task for b in bs]
        values = [_mutate(rng, rng.choice(bases if rng.random() < 0.9 else others))
                  for _ in range(1500)]
        out = _same(task, values)
        good = sum(not isinstance(o, DeadLetter) for o in out)
        assert 0.15 * len(values) < good < 0.85 * len(values)  # both paths well covered


def test_str_and_positions_default_like_decode_one():
    values = [orjson.dumps(LINK).decode(), orjson.dumps(LINK), b"{"]
    out = decode_many(values, task="forecast")
    assert out[0] == out[1] == decode_one(values[0], task="forecast")
    assert isinstance(out[2], DeadLetter) and out[2].position == Position()


def test_bad_arguments_are_refused_naming_the_value():
    with pytest.raises(ValueError, match="unknown task 'vision'; valid choices: forecast, ctr"):
        decode_many([b"{}"], task="vision")
    with pytest.raises(ValueError, match="2 values but 1 positions"):
        decode_many([b"{}", b"{}"], [Position()], task="ctr")
