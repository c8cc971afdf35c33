"""`streamadapt run` as a user runs it: a subprocess that serves HTTP while it streams and
exits cleanly on SIGTERM/SIGINT after finishing the batch in flight."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import orjson
import pytest

from connectors.cli import main


def _wait_for_url(proc, timeout=60.0):
    deadline = time.time() + timeout
    line = ""
    while time.time() < deadline:
        line = proc.stderr.readline()
        if "serving /metrics" in line:
            return line.rsplit(" ", 1)[-1].strip()
        if proc.poll() is not None:
            break
    raise AssertionError(f"service did not start: {line!r}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_http_and_stops_cleanly_on_signal(sig):
    env = {**os.environ, "STREAMADAPT_SEED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "connectors", "run", "--rate", "2000", "--http-port", "0",
         "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        url = _wait_for_url(proc)
        time.sleep(1.0)
        with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
            assert json.loads(r.read())["status"] == "ready"
        with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        assert "streamadapt_events_total" in text
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"{signal.Signals(sig).name}: finishing the batch in flight" in err
    assert "predictions emitted" in out + err


def test_run_replays_a_jsonl_file_and_dead_letters_bad_lines(tmp_path, capsys):
    path = tmp_path / "events.jsonl"
    lines = [orjson.dumps({"event_id": f"e{i}", "link_id": "l", "timestamp": i, "load": 1.0 + i})
             for i in range(50)]
    lines[10] = b'{"event_id": "x", "link_id": "l", "timestamp": 1, "load": "NaN"}'
    lines[20] = b"not json"
    path.write_bytes(b"\n".join(lines))
    assert main(["run", "--input", str(path), "--http-port", "0", "--no-progress"]) == 0
    err = capsys.readouterr()
    text = err.out + err.err
    assert "dead letters: malformed_json" in text and "dead letters: validation_error" in text


def test_run_bad_setting_fails_at_start_naming_the_field(capsys, monkeypatch):
    monkeypatch.setenv("STREAMADAPT_PIPELINE__BATCH_SIZE", "-5")
    assert main(["run", "--no-progress"]) == 2
    assert "pipeline.batch_size" in capsys.readouterr().err
