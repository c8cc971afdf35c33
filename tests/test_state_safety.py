"""Checkpointed state cannot run code, signed checkpoints prove where they come from, and a
fenced member cannot overwrite the state of the one that took its partitions over.

* Every registered model and every drift detector round-trips through a checkpoint (the
  allow-list of :mod:`streamadapt.state` is complete), and the allow-list holds nothing that
  these round trips do not use (it is exact).
* A forged checkpoint whose river pickle carries a gadget (``os.system``, ``eval``,
  ``getattr``, ``subprocess``, ...) is refused with the global named, and the marker file
  the gadget would create never appears; the service falls back to the previous good
  checkpoint, or starts fresh.
* Signing: another key, no signature while a key is set, a signature while none is set,
  altered bytes: all refused.
* Generation fencing of the directory store.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import operator
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from pydantic import SecretStr
from river import stats

from streamadapt import state as state_io
from streamadapt.adapters.registry import make_model, model_names
from streamadapt.adapters.river_models import RiverLinearForecaster
from streamadapt.checkpoint import (
    CheckpointStore,
    CorruptCheckpoint,
    StaleCheckpoint,
    UntrustedCheckpoint,
    decode_checkpoint,
    encode_checkpoint,
)
from streamadapt.checks import sample_data
from streamadapt.drift.detectors import detector_names
from streamadapt.drift.watch import SignalWatcher
from streamadapt.io import IterableSource, ListSink
from streamadapt.metrics import REGISTRY
from streamadapt.pipeline import Pipeline
from streamadapt.service import Service
from streamadapt.settings import SettingsError, load_settings

KEY = b"0123456789abcdef-key-one"
OTHER_KEY = b"0123456789abcdef-key-two"


def _feed(model: Any, xs: list[Any], ys: np.ndarray, batch: int = 16) -> None:
    for i in range(0, len(xs), batch):
        model.predict_many(xs[i:i + batch])
        model.learn_many(xs[i:i + batch], ys[i:i + batch])


def _pickles(state: Any) -> list[bytes]:
    """Every bytes value inside a state dict (the embedded river pickles)."""
    if isinstance(state, dict):
        return [b for v in state.values() for b in _pickles(v)]
    if isinstance(state, list | tuple):
        return [b for v in state for b in _pickles(v)]
    return [state] if isinstance(state, bytes) else []


def _replace_pickles(state: Any, payload: bytes) -> Any:
    """``state`` with every embedded pickle replaced by ``payload`` (what a forger does)."""
    if isinstance(state, dict):
        return {k: _replace_pickles(v, payload) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return [_replace_pickles(v, payload) for v in state]
    return payload if isinstance(state, bytes) else state


class _Used:
    """Records every global the state unpickler resolves."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: set[str] = set()
        original = state_io._StateUnpickler.find_class

        def find_class(unpickler: Any, module: str, name: str) -> Any:
            self.names.add(f"{module}.{name}")
            return original(unpickler, module, name)

        monkeypatch.setattr(state_io._StateUnpickler, "find_class", find_class)


# -- the allow-list is complete and exact ------------------------------------------------------
RIVER_MODELS = {"river-linear", "river-logreg", "river-fm", "river-snarimax",
                "river-holtwinters"}


def _round_trip_models(key: bytes | None) -> set[str]:
    """Train every registered model, checkpoint it, restore it into a model built with
    another seed and check the predictions agree; returns the models holding pickles."""
    with_pickles = set()
    for name in sorted(model_names()):
        a = make_model(name, seed=1)
        xs, ys = sample_data(a.task, n=240)
        _feed(a, xs[:160], ys[:160])
        blob = encode_checkpoint(a.state_dict(), {("t", 0): 160}, hmac_key=key)
        found = decode_checkpoint(blob, hmac_key=key)
        if _pickles(found.state):
            with_pickles.add(name)
        b = make_model(name, seed=2)
        b.load_state_dict(found.state)
        for i in range(160, 240, 16):
            pa, pb = a.predict_many(xs[i:i + 16]), b.predict_many(xs[i:i + 16])
            assert np.allclose(pa, pb, rtol=1e-6, atol=1e-9), (name, i, pa[:3], pb[:3])
            a.learn_many(xs[i:i + 16], ys[i:i + 16])
            b.learn_many(xs[i:i + 16], ys[i:i + 16])
    return with_pickles


def _round_trip_detectors() -> None:
    """Every drift detector, in both directions, past its warm-up (the live river detector
    is a pickle), restored from a checkpoint reports the same detections."""
    rng = np.random.default_rng(0)
    warm = np.concatenate([rng.normal(0, 1, 600), rng.normal(3, 1, 300)])
    later = np.concatenate([rng.normal(3, 1, 300), rng.normal(-1, 1, 600)])
    for name in detector_names():
        for direction in ("up", "both"):
            a = SignalWatcher(name, warmup=200, n_replay=2000, seed=0, direction=direction)
            a.update_many(warm)
            blob = encode_checkpoint({"watcher": a.state_dict()}, {})
            state = decode_checkpoint(blob).state["watcher"]
            assert state["runner"] is not None and _pickles(state), name
            b = SignalWatcher(name, warmup=200, n_replay=2000, seed=0, direction=direction)
            b.load_state_dict(state)
            assert a.update_many(later) == b.update_many(later), (name, direction)


def test_every_registered_model_and_detector_round_trips_through_a_checkpoint(
        monkeypatch: pytest.MonkeyPatch) -> None:
    used = _Used(monkeypatch)
    assert _round_trip_models(None) == RIVER_MODELS
    _round_trip_detectors()
    allowed = set(state_io.allowed_globals())
    assert used.names <= allowed
    # Exact: every entry is used, except numpy's other name for its multiarray module.
    multiarray = "numpy._core.multiarray" if any(
        n.startswith("numpy._core.") for n in used.names) else "numpy.core.multiarray"
    other = ({"numpy._core.multiarray", "numpy.core.multiarray"} - {multiarray}).pop()
    assert allowed - used.names == {f"{other}._reconstruct", f"{other}.scalar"}


def test_signed_checkpoints_round_trip_every_registered_model() -> None:
    assert _round_trip_models(KEY) == RIVER_MODELS


def test_page_hinkley_down_mode_round_trips() -> None:
    from streamadapt.drift.detectors import make_detector

    d = make_detector("page-hinkley", mode="down")
    for x in np.random.default_rng(1).normal(0, 1, 200).tolist():
        d.update(x)
    back = state_io.restricted_unpickle(pickle.dumps(d))
    assert back._test_drift.__func__ is type(d)._test_decrease


# -- gadgets: refused, named, and nothing runs -------------------------------------------------
class _Gadget:
    """An object whose pickle calls ``func(*args)`` when loaded."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _op(code: bytes, text: str | None = None) -> bytes:
    """A SHORT_BINUNICODE string push after ``code``, or ``code`` alone."""
    if text is None:
        return code
    raw = text.encode()
    return code + pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw


def _global(module: str, name: str) -> bytes:
    return _op(b"", module) + _op(b"", name) + pickle.STACK_GLOBAL


def _payloads(marker: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (pickle bytes, what the refusal must name). Each gadget that could create
    ``marker`` would do so if it ran."""
    m = str(marker)
    touch = f"touch {m}"
    create = f"open({m!r}, 'w').close()"
    proto = pickle.PROTO + bytes([4])
    return {
        "os.system": (pickle.dumps(_Gadget(os.system, touch)), f"{os.system.__module__}.system"),
        "os.system, protocol 0": (f"cos\nsystem\n(S'{touch}'\ntR.".encode(), "os.system"),
        "posix.system": (f"cposix\nsystem\n(S'{touch}'\ntR.".encode(), "posix.system"),
        "builtins.eval": (pickle.dumps(_Gadget(builtins.eval, create)), "builtins.eval"),
        "builtins.exec": (pickle.dumps(_Gadget(builtins.exec, create)), "builtins.exec"),
        "subprocess.call": (pickle.dumps(_Gadget(subprocess.call, ["touch", m])),
                            "subprocess.call"),
        "subprocess.Popen": (pickle.dumps(_Gadget(subprocess.Popen, ["touch", m])),
                             "subprocess.Popen"),
        "operator.attrgetter": (pickle.dumps(_Gadget(operator.attrgetter("system"))),
                                "operator.attrgetter"),
        "builtins.__import__": (pickle.dumps(_Gadget(builtins.__import__, "os")),
                                "builtins.__import__"),
        # getattr is admitted only for the bound methods river objects keep
        "getattr gadget": (pickle.dumps(_Gadget(getattr, stats.Mean(), "__class__")),
                           "builtins.getattr"),
        "getattr of a listed name on another class": (
            pickle.dumps(_Gadget(getattr, stats.Mean(), "_scale")), "builtins.getattr"),
        # an allow-listed river object is never called
        "call of an allow-listed instance": (
            proto + _global("river.optim.initializers", "Zeros") + pickle.EMPTY_TUPLE
            + pickle.NEWOBJ + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.STOP,
            "refusing to call a river.optim.initializers.Zeros object"),
        # a class is never changed (monkey-patched) by a pickle
        "class attribute set by BUILD": (
            proto + _global("river.stats.mean", "Mean") + pickle.EMPTY_DICT
            + _op(b"", "update") + pickle.NONE + pickle.SETITEM + pickle.BUILD + pickle.STOP,
            "refusing to change class river.stats.mean.Mean"),
        "dunder attribute set by BUILD": (
            proto + _global("river.stats.mean", "Mean") + pickle.EMPTY_TUPLE + pickle.NEWOBJ
            + pickle.EMPTY_DICT + _op(b"", "__class__") + pickle.NONE + pickle.SETITEM
            + pickle.BUILD + pickle.STOP,
            "refusing attribute '__class__'"),
        "item set on a river object": (
            proto + _global("river.stats.mean", "Mean") + pickle.EMPTY_TUPLE + pickle.NEWOBJ
            + _op(b"", "k") + pickle.NONE + pickle.SETITEM + pickle.STOP,
            "refusing to set items of a river.stats.mean.Mean object"),
        "extension registry": (proto + pickle.EXT1 + b"\x01" + pickle.STOP, "EXT1"),
    }


PAYLOAD_NAMES = list(_payloads(Path("/nonexistent")))


def test_the_gadgets_are_live(tmp_path: Path) -> None:
    """The control: with the ordinary unpickler the eval gadget does create the marker."""
    marker = tmp_path / "pwned"
    pickle.loads(_payloads(marker)["builtins.eval"][0])
    assert marker.exists()


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_gadget_is_refused_by_the_unpickler(name: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload, named = _payloads(marker)[name]
    with pytest.raises(state_io.UnsafeStateError, match="refusing") as err:
        state_io.restricted_unpickle(payload)
    assert named in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_forged_checkpoint_is_refused_before_any_model_sees_it(name: str,
                                                               tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload, named = _payloads(marker)[name]
    model = RiverLinearForecaster()
    forged = _replace_pickles(model.state_dict(), payload)
    blob = encode_checkpoint({"models": {"m": forged}}, {("t", 0): 1})  # a valid checksum
    with pytest.raises(UntrustedCheckpoint, match="state refused") as err:
        decode_checkpoint(blob)
    assert named in str(err.value) and "state.models.m.model" in str(err.value)
    assert not marker.exists()


def test_damaged_embedded_pickle_is_corrupt_not_a_crash() -> None:
    good = pickle.dumps(stats.Mean())
    blob = encode_checkpoint({"m": {"model": good[:-5]}}, {})
    with pytest.raises(CorruptCheckpoint, match="state does not load: state.m.model"):
        decode_checkpoint(blob)
    # bytes that are not a pickle at all are left to their owner
    assert decode_checkpoint(encode_checkpoint({"raw": b"not a pickle"}, {})).state == {
        "raw": b"not a pickle"}


# -- the service falls back, or starts fresh -----------------------------------------------------
def _records(n: int) -> list[bytes]:
    return [orjson.dumps({"event_id": f"e{i}", "link_id": f"l{i % 3}", "timestamp": 60.0 * i,
                          "load": 10.0 + (i % 5) + 0.01 * i}) for i in range(n)]


def _service(store: CheckpointStore, recs: list[bytes] = ()) -> Service:
    pipe = Pipeline("forecast", {"m": RiverLinearForecaster()})
    return Service(pipe, IterableSource(list(recs), name="mem"), ListSink(), ListSink(),
                   batch_size=50, checkpointer=store, checkpoint_interval_s=0.0)


def _plant(store: CheckpointStore, payload: bytes, key: bytes | None = None) -> Path:
    """Write a forged newest service checkpoint: the last good state with its river pickles
    swapped for ``payload``, behind a valid checksum (or signed with ``key``)."""
    good = store.restore_slot_full("service")
    state = _replace_pickles(good.state, payload)
    files = store.files()
    path = files[-1].with_name(f"{int(files[-1].stem) + 1:012d}.ckpt")
    path.write_bytes(encode_checkpoint(state, good.offsets, hmac_key=key))
    return path


def _predictions(service: Service) -> np.ndarray:
    xs, _ = sample_data("forecast", n=40)
    return service.pipeline.models["m"].predict_many(xs)


def _refused() -> float:
    return REGISTRY.get_sample_value("streamadapt_checkpoints_total",
                                     {"outcome": "refused"}) or 0.0


@pytest.mark.parametrize("signed", [False, True])
def test_service_falls_back_to_the_previous_good_checkpoint(
        signed: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = KEY if signed else None
    store = CheckpointStore(tmp_path / "ckpt", keep=5, hmac_key=key)
    first = _service(store, _records(300))
    first.run()
    good = store.restore_slot_full("service")
    marker = tmp_path / "pwned"
    payload = _payloads(marker)["os.system"][0]
    # with a key the forger cannot sign: the forged file is refused for its signature
    forged = _plant(store, payload, key=OTHER_KEY if signed else None)
    before = _refused()
    restarted = _service(CheckpointStore(tmp_path / "ckpt", keep=5, hmac_key=key))
    with caplog.at_level(logging.ERROR, logger="streamadapt.checkpoint"):
        assert restarted.restore() is True
    assert not marker.exists()
    assert restarted.checkpointer.corrupt == [forged]
    assert _refused() == before + 1
    text = caplog.text
    assert "refused" in text and forged.name in text
    assert ("signature does not match" if signed else "posix.system") in text
    reference = _service(CheckpointStore(tmp_path / "other"))
    reference.pipeline.load_state_dict(good.state)
    assert np.array_equal(_predictions(restarted), _predictions(reference))
    fresh = _service(CheckpointStore(tmp_path / "fresh"))
    assert not np.array_equal(_predictions(restarted), _predictions(fresh))


def test_service_starts_fresh_when_every_checkpoint_is_forged(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    _service(store, _records(120)).run()
    marker = tmp_path / "pwned"
    payload = _payloads(marker)["builtins.eval"][0]
    for path in store.files():  # every file rewritten with the gadget, valid checksums
        found = decode_checkpoint(path.read_bytes())
        path.write_bytes(encode_checkpoint(_replace_pickles(found.state, payload),
                                           found.offsets))
    restarted = _service(CheckpointStore(tmp_path, keep=2))
    assert restarted.restore() is False
    assert len(restarted.checkpointer.corrupt) == 2
    assert not marker.exists()
    fresh = _service(CheckpointStore(tmp_path / "none"))
    assert np.array_equal(_predictions(restarted), _predictions(fresh))


# -- signing ---------------------------------------------------------------------------------------
def test_checkpoint_signed_with_another_key_is_refused(tmp_path: Path) -> None:
    CheckpointStore(tmp_path, hmac_key=OTHER_KEY).save({"n": 1}, {("t", 0): 1})
    store = CheckpointStore(tmp_path, hmac_key=KEY)
    assert store.restore() is None
    assert store.corrupt == store.files()
    with pytest.raises(UntrustedCheckpoint, match="signature does not match the configured key"):
        decode_checkpoint(store.files()[0].read_bytes(), hmac_key=KEY)


def test_unsigned_checkpoint_is_refused_when_a_key_is_set(tmp_path: Path) -> None:
    CheckpointStore(tmp_path).save({"n": 1}, {("t", 0): 1})
    store = CheckpointStore(tmp_path, hmac_key=KEY)
    assert store.restore() is None and store.corrupt == store.files()
    with pytest.raises(UntrustedCheckpoint,
                       match="unsigned checkpoint refused: a key is configured"):
        decode_checkpoint(store.files()[0].read_bytes(), hmac_key=KEY)


def test_signed_checkpoint_needs_a_key(tmp_path: Path) -> None:
    CheckpointStore(tmp_path, hmac_key=KEY).save({"n": 1}, {("t", 0): 1})
    store = CheckpointStore(tmp_path)
    assert store.restore() is None and store.corrupt == store.files()
    with pytest.raises(UntrustedCheckpoint, match="a key is needed"):
        decode_checkpoint(store.files()[0].read_bytes())


@pytest.mark.parametrize("key", [KEY, None])
@pytest.mark.parametrize("where", ["body", "digest", "header", "truncated"])
def test_tampered_bytes_are_refused(key: bytes | None, where: str) -> None:
    blob = bytearray(encode_checkpoint({"n": 1}, {("t", 0): 1}, hmac_key=key))
    header = blob.index(b"\n") + 1
    if where == "body":
        blob[-20] ^= 0x01
    elif where == "digest":
        blob[header + 3] ^= 0x01
    elif where == "header":
        blob[2] ^= 0x01
    else:
        blob = blob[: header + 10]
    with pytest.raises(CorruptCheckpoint) as err:
        decode_checkpoint(bytes(blob), hmac_key=key)
    if key is not None and where in ("body", "digest"):
        assert isinstance(err.value, UntrustedCheckpoint)
        assert "signature does not match" in str(err.value)


def test_a_good_signed_checkpoint_behind_a_foreign_one_is_used(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, hmac_key=KEY)
    store.save({"n": 1}, {("t", 0): 1})
    foreign = store.files()[0].with_name(f"{2:012d}.ckpt")
    foreign.write_bytes(encode_checkpoint({"n": 2}, {("t", 0): 2}, hmac_key=OTHER_KEY))
    assert store.restore() == ({"n": 1}, {("t", 0): 1})
    assert store.corrupt == [foreign]


def test_key_forms_and_secrecy(tmp_path: Path) -> None:
    text = KEY.decode()
    for form in (KEY, text, SecretStr(text)):
        store = CheckpointStore(tmp_path / type(form).__name__, hmac_key=form)
        store.save({"n": 1}, {})
        assert store.signed
        assert decode_checkpoint(store.files()[0].read_bytes(), hmac_key=KEY).state == {"n": 1}
        assert text not in repr(store)
    with pytest.raises(ValueError, match="must not be empty"):
        CheckpointStore(tmp_path, hmac_key=b"")
    with pytest.raises(TypeError, match="hmac_key must be bytes"):
        encode_checkpoint({}, {}, hmac_key="text")  # type: ignore[arg-type]


def test_settings_key_is_a_secret_and_a_short_one_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.startswith("STREAMADAPT_")]:
        monkeypatch.delenv(k)
    assert load_settings().checkpoint.hmac_key is None
    monkeypatch.setenv("STREAMADAPT_CHECKPOINT__HMAC_KEY", "short-secret")
    with pytest.raises(SettingsError, match="at least 16") as err:
        load_settings()
    assert "short-secret" not in str(err.value)
    monkeypatch.setenv("STREAMADAPT_CHECKPOINT__HMAC_KEY", KEY.decode())
    s = load_settings()
    assert s.checkpoint.hmac_key.get_secret_value() == KEY.decode()
    assert KEY.decode() not in repr(s) and KEY.decode() not in s.model_dump_json()


# -- generation fencing ---------------------------------------------------------------------------
def test_an_older_generation_cannot_write_over_a_newer_one(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    tp = ("t", 0)
    store.save_partition(tp, {"n": 1}, 10, generation=5)
    before = store.files("t.0")
    with pytest.raises(StaleCheckpoint, match="generation 4 is older than generation 5"):
        store.save_partition(tp, {"n": 2}, 11, generation=4)
    assert store.files("t.0") == before
    assert not [p for p in (tmp_path / "t.0").iterdir() if p.name.startswith(".tmp-")]
    store.save_partition(tp, {"n": 3}, 12, generation=5)  # the same generation goes on
    store.save_partition(tp, {"n": 4}, 13, generation=6)
    store.save_partition(tp, {"n": 5}, 14)  # unknown generation (-1): never fenced
    full = store.restore_slot_full("t.0")
    assert (full.state, full.offsets, full.generation) == ({"n": 5}, {tp: 14}, -1)
    assert store.restore_partition(tp) == ({"n": 5}, 14)
    # the newest valid checkpoint with a generation is 6 (-1 is newer but says nothing)
    with pytest.raises(StaleCheckpoint):
        store.save_partition(tp, {"n": 6}, 15, generation=5)


def test_fencing_reads_what_another_replica_wrote(tmp_path: Path) -> None:
    new_owner = CheckpointStore(tmp_path, hmac_key=KEY)
    zombie = CheckpointStore(tmp_path, hmac_key=KEY)
    zombie.save_partition(("t", 1), {"owner": "zombie"}, 5, generation=3)
    new_owner.save_partition(("t", 1), {"owner": "new"}, 7, generation=4)
    with pytest.raises(StaleCheckpoint, match="slot 't.1'"):
        zombie.save_partition(("t", 1), {"owner": "zombie"}, 9, generation=3)
    found = zombie.restore_slot_full("t.1")
    assert (found.state["owner"], found.generation) == ("new", 4)


def test_an_invalid_newest_checkpoint_does_not_fence(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, hmac_key=KEY)
    store.save_partition(("t", 0), {"n": 1}, 1, generation=2)
    forged = store.files("t.0")[-1].with_name(f"{2:012d}.ckpt")
    forged.write_bytes(encode_checkpoint({"n": 9}, {("t", 0): 9}, generation=99,
                                         hmac_key=OTHER_KEY))
    store.save_partition(("t", 0), {"n": 2}, 2, generation=3)  # 99 is not a valid claim
    assert store.restore_slot_full("t.0").generation == 3


def test_files_of_the_earlier_format_still_load_and_do_not_fence(tmp_path: Path) -> None:
    """A checkpoint written before generations were recorded (no ``generation`` field)."""
    body = state_io.dumps({"state": {"n": 1}, "offsets": [["t", 0, 10]], "created": 1.0})
    slot = tmp_path / "t.0"
    slot.mkdir()
    (slot / f"{1:012d}.ckpt").write_bytes(
        b"STREAMADAPT-CKPT-1\n" + hashlib.sha256(body).digest() + body)
    store = CheckpointStore(tmp_path)
    found = store.restore_slot_full("t.0")
    assert (found.state, found.offsets, found.generation) == ({"n": 1}, {("t", 0): 10}, -1)
    store.save_partition(("t", 0), {"n": 2}, 11, generation=0)
    assert [p.name for p in store.files("t.0")] == [f"{1:012d}.ckpt", f"{2:012d}.ckpt"]


def test_bad_slot_names_are_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for bad in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(ValueError, match="bad slot name"):
            store.save_slot(bad, {}, {})
