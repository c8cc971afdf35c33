"""File replay: CSV, JSONL and Parquet with a column mapping; bad rows become dead letters."""

import doctest
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import connectors.files
from connectors.files import ColumnMap, detect_format, file_columns, file_stream, read_events
from streamadapt.adapters.naive import ClickRate, LastValue
from streamadapt.evaluate import evaluate
from streamadapt.events import NO_ID, DeadLetter, Impression, LinkLoadSample

FORECAST_ROWS = [
    {"ts": "2024-01-01T00:00:00Z", "link": "a", "mbps": "10", "temp": "1.5"},
    {"ts": "2024-01-01T00:05:00Z", "link": "a", "mbps": "-3", "temp": "1.5"},   # load < 0
    {"ts": "2024-01-01T00:05:00Z", "link": "b", "mbps": "", "temp": "2"},       # no load
    {"ts": "not a time", "link": "a", "mbps": "11", "temp": "1"},               # bad time
    {"ts": "1704067800", "link": "a", "mbps": "12", "temp": "nan"},             # nan covariate
    {"ts": "1704068100", "link": "a", "mbps": "13", "temp": "0.5"},
    {"ts": "2024-01-01T00:20:00", "link": "b", "mbps": "7.5", "temp": "3"},     # naive = UTC
]
GOOD = 3  # rows 1, 6 and 7


def write_csv(path, rows):
    cols = list(rows[0])
    lines = [",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def forecast_cols(**kw):
    return ColumnMap("forecast", target="mbps", time="ts", key="link", numeric=("temp",), **kw)


def check_forecast(out):
    assert len(out) == len(FORECAST_ROWS)
    good = [e for e in out if isinstance(e, LinkLoadSample)]
    dead = [e for e in out if isinstance(e, DeadLetter)]
    assert len(good) == GOOD and len(dead) == len(FORECAST_ROWS) - GOOD
    assert [d.position.offset for d in dead] == [2, 3, 4, 5]
    reasons = [d.reason for d in dead]
    assert "load" in reasons[0] and "greater than or equal to 0" in reasons[0]
    assert reasons[1].startswith("validation error: load")
    assert reasons[2].startswith("bad timestamp: column 'ts'") and "not a time" in reasons[2]
    assert "covariates.temp" in reasons[3]
    assert good[0].timestamp == 1704067200.0 and good[0].covariates == {"temp": 1.5}
    assert good[0].event_id.endswith("-1") and good[1].timestamp == 1704068100.0
    assert good[2].link_id == "b" and good[2].timestamp == 1704068400.0
    assert all(d.position.source.endswith(("loads.csv", "loads.jsonl", "loads.parquet",
                                           "loads.csv.gz")) for d in dead)


def test_csv_forecast_with_bad_rows(tmp_path):
    path = write_csv(tmp_path / "loads.csv", FORECAST_ROWS)
    check_forecast(list(read_events(path, forecast_cols())))


def test_jsonl_forecast_with_bad_rows_and_broken_lines(tmp_path):
    path = tmp_path / "loads.jsonl"
    lines = [json.dumps(r) for r in FORECAST_ROWS]
    path.write_text("\n".join(lines[:3] + ["", "{broken"] + lines[3:] + ["[1, 2]"]) + "\n")
    out = list(read_events(path, forecast_cols()))
    broken = [e for e in out if isinstance(e, DeadLetter) and e.reason.startswith("malformed")]
    assert [b.position.offset for b in broken] == [4, 9]  # blank lines are not rows
    assert broken[0].payload == b"{broken\n"
    kept = []
    for e in out:  # drop the broken lines, renumber, and check as for CSV
        if e in broken:
            continue
        if isinstance(e, DeadLetter) and e.position.offset > 4:
            e.position = type(e.position)(e.position.source, 0, e.position.offset - 1)
        kept.append(e)
    check_forecast(kept)


def test_parquet_forecast_with_bad_rows_in_chunks(tmp_path):
    path = tmp_path / "loads.parquet"
    pq.write_table(pa.Table.from_pylist(FORECAST_ROWS), path)
    stream = file_stream(path, forecast_cols(), chunk_size=2)
    assert stream.n_events == len(FORECAST_ROWS) and stream.task == "forecast"
    check_forecast(list(stream.events))


def test_parquet_native_types_and_timestamps(tmp_path):
    import datetime as dt

    path = tmp_path / "native.parquet"
    rows = [{"t": dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "v": 1.0, "id": 7},
            {"t": dt.datetime(2024, 1, 1, 0, 1, tzinfo=dt.UTC), "v": None, "id": 8}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    out = list(read_events(path, ColumnMap("forecast", target="v", time="t", id="id")))
    assert out[0].timestamp == 1704067200.0 and out[0].event_id == "7"
    assert out[0].link_id == "native"  # no key column: the file's stem
    assert isinstance(out[1], DeadLetter)


def test_gzipped_csv(tmp_path):
    path = tmp_path / "loads.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(write_csv(tmp_path / "x.csv", FORECAST_ROWS).read_text())
    assert detect_format(path) == "csv"
    check_forecast(list(read_events(path, forecast_cols())))


def test_ctr_csv(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text(
        "\ufeffwhen,uid,iid,click,country,price,row\n"
        "1,u1,i1,1.00,de,9.5,r1\n"
        "2,u1,i2,0,fr,3,r2\n"
        "3,u2,i1,true,de,1,r3\n"
        "4,u2,i2,2,de,1,r4\n"        # label 2: invalid
        "5,,i2,0,de,1,r5\n"          # empty user id
        "6,u3,i3,,de,1,r6\n"         # no label: an unlabelled impression
        "7,u3,i3,0,de\n"             # short row: missing price
    )
    cols = ColumnMap("ctr", target="click", time="when", key="uid", item="iid",
                     categorical=("country",), numeric=("price",), id="row")
    out = list(read_events(path, cols))
    imps = [e for e in out if isinstance(e, Impression)]
    dead = [e for e in out if isinstance(e, DeadLetter)]
    assert [e.event_id for e in imps] == ["r1", "r2", "r3", "r6"]
    assert [e.label for e in imps] == [1, 0, 1, None]
    assert imps[0].categorical == {"country": "de"} and imps[0].numeric == {"price": 9.5}
    assert [d.position.offset for d in dead] == [4, 5, 7]
    assert "label" in dead[0].reason and "user_id" in dead[1].reason
    assert "numeric.price" in dead[2].reason
    assert json.loads(dead[0].payload)["click"] == "2"  # the row as read


EVENTS_ROWS = (
    "row,uid,iid,alarm,zone,temp\n"
    "r1,u1,i1,1,north,9.5\n"
    "r2,u1,i2,0,south,3\n"
    "r3,u2,i1,2,north,1\n"        # label 2: invalid
    "r4,,,0,north,1\n"            # empty user and item
    "r5,u2,i2,0,north,inf\n"      # non-finite numeric
    "r6,u3,i3,,south,1\n"         # no label: an unlabelled impression
)


@pytest.mark.parametrize("key, item", [(None, None), ("uid", None), (None, "iid")])
def test_ctr_without_user_or_item_columns(tmp_path, key, item):
    path = tmp_path / "alarms.csv"
    path.write_text(EVENTS_ROWS)
    cols = ColumnMap("ctr", target="alarm", key=key, item=item, categorical=("zone",),
                     numeric=("temp",))
    out = list(read_events(path, cols))
    imps = [e for e in out if isinstance(e, Impression)]
    dead = [e for e in out if isinstance(e, DeadLetter)]
    # an unmapped id is the constant placeholder; a mapped one is read, and empty is bad
    assert {e.user_id for e in imps} == ({"u1", "u3"} if key else {NO_ID})
    assert {e.item_id for e in imps} <= ({"i1", "i2", "i3"} if item else {NO_ID})
    good_rows = [1, 2, 6] if key or item else [1, 2, 4, 6]
    assert [e.event_id for e in imps] == [f"alarms-{n}" for n in good_rows]
    assert [e.timestamp for e in imps] == [float(n) for n in good_rows]
    assert [d.position.offset for d in dead] == sorted({3, 5, 4} - set(good_rows))
    assert "label" in dead[0].reason and "numeric.temp" in dead[-1].reason
    if key or item:
        assert ("user_id" if key else "item_id") in dead[1].reason
    assert imps[0].categorical == {"zone": "north"} and imps[0].numeric == {"temp": 9.5}


def test_ctr_without_ids_takes_the_event_id_column(tmp_path):
    path = tmp_path / "alarms.csv"
    path.write_text(EVENTS_ROWS)
    out = list(read_events(path, ColumnMap("ctr", target="alarm", id="row")))
    assert [e.event_id for e in out if isinstance(e, Impression)] == ["r1", "r2", "r4", "r5",
                                                                      "r6"]


def test_missing_column_fails_at_start_naming_it(tmp_path):
    path = write_csv(tmp_path / "loads.csv", FORECAST_ROWS)
    with pytest.raises(ValueError) as exc:
        read_events(path, ColumnMap("forecast", target="load", time="ts"))
    msg = str(exc.value)
    assert "column 'load' (--target)" in msg and "its columns: ts, link, mbps, temp" in msg
    with pytest.raises(ValueError, match=r"column 'zz' \(--numeric\)"):
        read_events(path, ColumnMap("forecast", target="mbps", numeric=("zz",)))


def test_bad_mapping_format_and_path(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'regression'; valid choices: forecast"):
        ColumnMap("regression", target="y")
    with pytest.raises(ValueError, match="--item and --categorical are ctr columns"):
        ColumnMap("forecast", target="y", item="i")
    with pytest.raises(ValueError, match="from its extension '.txt'; pass --format, one of"):
        detect_format(tmp_path / "data.txt")
    with pytest.raises(ValueError, match="unknown format 'xls'; valid choices: csv, jsonl"):
        detect_format(tmp_path / "data.csv", "xls")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_events(tmp_path / "absent.csv", forecast_cols())
    txt = tmp_path / "data.txt"
    txt.write_text('{"a": 1, "b": 2}\n')
    assert file_columns(txt, "jsonl") == ["a", "b"]


def test_evaluate_on_a_file_counts_dead_letters(tmp_path):
    path = write_csv(tmp_path / "loads.csv", FORECAST_ROWS)
    report = evaluate(file_stream(path, forecast_cols()), {"naive": LastValue()},
                      progress=False)
    assert report["n_records"] == 7 and report["n_events"] == GOOD
    assert report["dead_letters"] == 4
    assert report["dead_letter_reasons"] == {"validation error": 3, "bad timestamp": 1}
    assert report["models"]["naive"]["n"] == 1  # link a: rows 1 -> 6
    assert report["models"]["naive"]["mae"] == 3.0


def test_evaluate_on_ctr_jsonl(tmp_path):
    path = tmp_path / "clicks.jsonl"
    rows = [{"t": i, "u": f"u{i % 3}", "i": f"i{i % 4}", "y": int(i % 4 == 0)}
            for i in range(40)]
    rows[5]["y"] = "maybe"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    stream = file_stream(path, ColumnMap("ctr", target="y", time="t", key="u", item="i"))
    report = evaluate(stream, {"rate": ClickRate()}, progress=False)
    assert report["dead_letters"] == 1 and report["models"]["rate"]["n"] == 39


def test_module_doctest():
    assert doctest.testmod(connectors.files).failed == 0
