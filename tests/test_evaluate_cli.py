"""`streamadapt evaluate` and `streamadapt models` end to end through connectors.cli.main."""

import json

import pytest

from connectors.cli import main
from connectors.commands.evaluate import choose_primary, default_models
from streamadapt.adapters.registry import model_names


def run(tmp_path, *args):
    report, plot = tmp_path / "out" / "r.json", tmp_path / "out" / "r.png"
    rc = main(["evaluate", *args, "--report", str(report), "--plot", str(plot),
               "--no-progress"])
    return rc, report, plot


def test_evaluate_builtin_dataset_writes_report_and_plot(tmp_path, capsys):
    rc, report, plot = run(tmp_path, "--dataset", "bank_calls", "--limit", "600",
                           "--models", "last-value,river-linear", "--slots", "5")
    assert rc == 0
    data = json.loads(report.read_text())
    assert data["dataset"] == "bank_calls" and data["n_events"] == 600
    assert list(data["models"]) == ["last-value", "river-linear"]
    assert len(data["models"]["last-value"]["slots"]) == 5
    assert data["config"]["seed"] == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "last-value" in out and "MAE" in out and str(report) in out


def test_evaluate_csv_file_with_bad_rows(tmp_path, capsys):
    csv = tmp_path / "clicks.csv"
    lines = ["ts,user,item,clicked,device"]
    for i in range(120):
        lines.append(f"{i},u{i % 5},i{i % 3},{int(i % 3 == 0)},d{i % 2}")
    lines[10] = "9,u4,i0,yes-ish,d1"  # a label that is not 0/1
    lines[20] = "oops,u4,i1,0,d0"  # a time that is no time
    csv.write_text("\n".join(lines) + "\n")
    rc, report, _ = run(tmp_path, "--input", str(csv), "--task", "ctr", "--target", "clicked",
                        "--time", "ts", "--key", "user", "--item", "item",
                        "--categorical", "device", "--models", "click-rate,river-logreg",
                        "--batch-size", "8")
    assert rc == 0
    data = json.loads(report.read_text())
    assert data["dead_letters"] == 2 and data["n_events"] == 118
    assert data["models"]["river-logreg"]["n"] == 118
    # clicks are exactly the items i0: the learned model must rank far above chance
    assert data["models"]["river-logreg"]["auc"] > 0.9
    assert "2 dead letters" in capsys.readouterr().out


def write_events_csv(path, n=240):
    """A binary event stream with no user or item: alarms fire in zone z0 when hot."""
    lines = ["zone,shift,temp,load,alarm"]
    for i in range(n):
        zone, temp = f"z{i % 3}", (i * 7) % 10
        lines.append(f"{zone},s{i % 2},{temp},{(i * 3) % 5},{int(zone == 'z0' and temp > 4)}")
    lines[5] = "z1,s0,hot,1,0"  # a numeric field that is no number
    lines[6] = "z1,s1,3,1,maybe"  # a label that is not 0/1
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_ctr_model_evaluates_a_file_without_users_or_items(tmp_path, capsys):
    csv = write_events_csv(tmp_path / "alarms.csv")
    names = model_names("ctr")
    rc, report, plot = run(tmp_path, "--input", str(csv), "--task", "ctr", "--target",
                           "alarm", "--categorical", "zone,shift", "--numeric", "temp,load",
                           "--models", ",".join(names), "--batch-size", "16")
    assert rc == 0 and plot.exists()
    data = json.loads(report.read_text())
    assert data["dead_letters"] == 2 and data["n_events"] == 238
    assert list(data["models"]) == names
    for name, m in data["models"].items():
        assert m["n"] == 238, name
        assert m["auc"] is not None and m["logloss"] is not None, name
        # no users: gAUC is null, not a copy of the AUC, and every impression is counted out
        assert (m["gauc"], m["gauc_users"], m["gauc_excluded"]) == (None, 0, 238), name
        assert all(s["gauc"] is None for s in m["slots"]), name
    assert data["models"]["river-logreg"]["auc"] > 0.8  # learned from the fields alone
    out = capsys.readouterr().out
    assert "gAUC -: the impressions have no user id (no --key)" in out


@pytest.mark.parametrize("mapping, per_user", [(["--key", "user"], True),
                                               (["--item", "item"], False)])
def test_evaluate_ctr_file_with_only_a_user_or_only_an_item(tmp_path, capsys, mapping,
                                                            per_user):
    csv = tmp_path / "clicks.csv"
    lines = ["user,item,device,clicked"]
    lines += [f"u{i % 4},i{i % 3},d{i % 2},{int(i % 3 == 0)}" for i in range(120)]
    csv.write_text("\n".join(lines) + "\n")
    rc, report, _ = run(tmp_path, "--input", str(csv), "--task", "ctr", "--target", "clicked",
                        *mapping, "--categorical", "device", "--models", "river-logreg")
    assert rc == 0
    m = json.loads(report.read_text())["models"]["river-logreg"]
    assert m["n"] == 120 and m["auc"] is not None
    if per_user:
        assert m["gauc"] is not None and m["gauc_users"] == 4 and m["gauc_excluded"] == 0
    else:
        assert (m["gauc"], m["gauc_users"], m["gauc_excluded"]) == (None, 0, 120)
    assert ("no user id" in capsys.readouterr().out) is not per_user


@pytest.mark.parametrize("args, message", [
    (["--dataset", "bank_calls", "--models", "nope"], "unknown model 'nope'; valid choices:"),
    (["--dataset", "bank_calls", "--models", "river-fm"],
     "model 'river-fm' is for task 'ctr', not 'forecast'; valid choices:"),
    (["--dataset", "bank_calls", "--models", "last-value,last-value"], "named twice"),
    (["--dataset", "nope"], "unknown dataset 'nope'; valid choices: linkload"),
    (["--dataset", "movielens", "--task", "forecast"],
     "dataset 'movielens' is a 'ctr' dataset, not 'forecast'"),
    (["--input", "x.csv"], "--input needs --task (forecast or ctr) and --target"),
])
def test_evaluate_bad_arguments_name_value_and_choices(tmp_path, capsys, args, message):
    rc, report, _ = run(tmp_path, *args)
    assert rc == 2 and not report.exists()
    err = capsys.readouterr().err
    assert message in err
    if "valid choices" in message:
        assert "last-value" in err or "bank_calls" in err


def test_evaluate_missing_column_lists_the_file_columns(tmp_path, capsys):
    csv = tmp_path / "loads.csv"
    csv.write_text("t,load\n0,1\n")
    rc, _, _ = run(tmp_path, "--input", str(csv), "--task", "forecast", "--target", "mbps")
    assert rc == 2
    assert "column 'mbps' (--target)" in capsys.readouterr().err


def test_models_command_lists_names_and_filters_by_task(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("last-value", "river-linear", "click-rate", "river-logreg", "river-fm"):
        assert name in out
    assert main(["models", "--task", "forecast"]) == 0
    out = capsys.readouterr().out
    assert "river-linear" in out and "river-logreg" not in out


def test_default_models_are_registered_and_start_with_the_naive_baseline():
    for task, baseline in (("forecast", "last-value"), ("ctr", "click-rate")):
        names = default_models(task)
        assert names[0] == baseline and set(names) <= set(model_names(task))


def test_evaluate_with_the_drift_monitor_reports_its_timeline(tmp_path, capsys):
    rc, report, plot = run(tmp_path, "--dataset", "bank_calls", "--limit", "3000",
                           "--models", "last-value", "--drift", "page-hinkley")
    assert rc == 0
    drift = json.loads(report.read_text())["drift"]
    assert drift["monitor"] == "DriftMonitor"
    types = [e["type"] for e in drift["timeline"]]
    assert drift["detections"] == types.count("detection")
    assert drift["adaptations"] == types.count("adaptation")
    assert all(isinstance(e["timestamp"], float) for e in drift["timeline"])
    assert drift["primary"] == "last-value"  # the only model listed
    assert "drift on last-value:" in capsys.readouterr().out and plot.exists()


def test_primary_defaults_to_the_task_default_then_to_a_learner():
    assert choose_primary(["click-rate", "river-logreg", "ctr-net+reloop2"], "ctr") \
        == "ctr-net+reloop2"
    assert choose_primary(["click-rate", "river-logreg"], "ctr") == "river-logreg"
    assert choose_primary(["last-value", "river-linear"], "forecast") == "river-linear"
    assert choose_primary(["last-value", "river-linear"], "forecast", "last-value") \
        == "last-value"
    with pytest.raises(ValueError, match="--primary 'liquid' is not among the models"):
        choose_primary(["last-value"], "forecast", "liquid")


def test_evaluate_unknown_detector_lists_the_detectors(tmp_path, capsys):
    rc, _, _ = run(tmp_path, "--dataset", "bank_calls", "--limit", "10", "--models",
                   "last-value", "--drift", "nope")
    assert rc == 2 and "unknown detector 'nope'; valid choices: adwin" in capsys.readouterr().err
