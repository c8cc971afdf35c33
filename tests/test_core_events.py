"""Event schemas and decoding: every bad record becomes a dead letter with a reason."""

import orjson
import pytest

from streamadapt.events import (
    NO_ID,
    DeadLetter,
    Impression,
    Label,
    LinkLoadSample,
    Position,
    Prediction,
    decode_one,
    encode,
)

GOOD = {"event_id": "e1", "link_id": "A-B", "timestamp": 1.0, "load": 2.5}


def test_round_trip_of_each_kind():
    for ev, task in (
        (LinkLoadSample(**GOOD, covariates={"cap": 10.0}), "forecast"),
        (Impression(event_id="i", user_id="u", item_id="m", timestamp=3.0,
                    categorical={"genre": "x"}, numeric={"price": 1.5}, label=1), "ctr"),
        (Label(event_id="i", label=0, timestamp=4.0), "ctr"),
    ):
        assert decode_one(encode(ev), task=task) == ev


def test_kind_is_inferred_for_ctr_streams():
    assert isinstance(decode_one(b'{"event_id":"i","label":1,"timestamp":2}', task="ctr"), Label)
    raw = b'{"event_id":"i","user_id":"u","item_id":"m","timestamp":2}'
    assert isinstance(decode_one(raw, task="ctr"), Impression)


def test_an_impression_without_user_or_item_sends_the_placeholder():
    bare = {"kind": "impression", "event_id": "i", "timestamp": 2, "numeric": {"amount": 3.0}}
    out = decode_one(orjson.dumps(bare), task="ctr")
    assert isinstance(out, DeadLetter)  # the ids stay required: a lost field is caught
    assert "user_id: Field required" in out.reason and "item_id: Field required" in out.reason
    ok = decode_one({**bare, "user_id": NO_ID, "item_id": NO_ID}, task="ctr")
    assert isinstance(ok, Impression) and ok.user_id == ok.item_id == "-"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "malformed json"),
        (b"[1, 2]", "not an object"),
        (orjson.dumps({**GOOD, "load": -1}), "validation error: load"),
        (orjson.dumps({**GOOD, "load": "heavy"}), "validation error: load"),
        (b'{"event_id":"e","link_id":"a","timestamp":1,"load":NaN}', "malformed json"),
        (b'{"event_id":"e","link_id":"a","timestamp":1,"load":1e999}', "malformed json"),
        ({**GOOD, "load": float("inf")}, "validation error: load"),
        ({**GOOD, "timestamp": float("nan")}, "validation error: timestamp"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "link_id"}),
         "validation error: link_id"),
        (orjson.dumps({**GOOD, "extra": 1}), "validation error: extra"),
        (orjson.dumps({**GOOD, "kind": "impression"}), "wrong kind for task"),
        (orjson.dumps({**GOOD, "kind": "tweet"}), "unknown kind 'tweet'"),
        (b"x" * 2_000_000, "oversized"),
    ],
)
def test_bad_records_become_dead_letters(raw, reason):
    out = decode_one(raw, task="forecast", position=Position("t", 2, 41))
    assert isinstance(out, DeadLetter)
    assert out.reason.startswith(reason), out.reason
    assert out.position == Position("t", 2, 41)
    assert out.payload  # the bytes are kept (truncated when oversized)


def test_unknown_task_is_an_error():
    with pytest.raises(ValueError, match="valid choices: forecast, ctr"):
        decode_one(b"{}", task="vision")


def test_prediction_record_encodes_as_json():
    p = Prediction(event_id="e", key="k", timestamp=0.5, base_prediction=1.0, prediction=2.0,
                   model_version="m:1", adaptations=("hebbian_tta",))
    assert orjson.loads(encode(p)) == {
        "event_id": "e", "key": "k", "timestamp": 0.5, "base_prediction": 1.0,
        "prediction": 2.0, "model_version": "m:1", "adaptations": ["hebbian_tta"]}
    assert Prediction.from_json(encode(p)) == p


def test_dead_letter_serialises_with_position():
    d = DeadLetter(b"{bad", "malformed json: x", Position("topic", 1, 7))
    assert d.to_dict() == {"payload": "{bad", "reason": "malformed json: x", "source": "topic",
                           "partition": 1, "offset": 7}
