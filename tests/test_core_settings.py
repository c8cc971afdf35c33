"""Settings: env, file, overrides; bad values fail at start naming the field."""

import pytest

from streamadapt.settings import SettingsError, load_settings


def test_defaults_pick_the_task_default_model():
    s = load_settings()
    assert (s.task, s.model) == ("forecast", "liquid")
    assert load_settings(task="ctr").model == "ctr-net+reloop2"


def test_env_nested_and_secret(monkeypatch):
    monkeypatch.setenv("STREAMADAPT_PIPELINE__BATCH_SIZE", "64")
    monkeypatch.setenv("STREAMADAPT_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMADAPT_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("STREAMADAPT_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("STREAMADAPT_KAFKA__SASL_PASSWORD", "hunter2")
    s = load_settings()
    assert s.pipeline.batch_size == 64
    assert s.kafka.sasl_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s)


def test_yaml_and_toml_files(tmp_path, monkeypatch):
    y = tmp_path / "s.yaml"
    y.write_text("task: ctr\npipeline:\n  attribution_window_s: 60\n")
    t = tmp_path / "s.toml"
    t.write_text('task = "ctr"\n[pipeline]\nbatch_size = 8\n')
    assert load_settings(y).pipeline.attribution_window_s == 60
    assert load_settings(t).pipeline.batch_size == 8
    monkeypatch.setenv("STREAMADAPT_CONFIG", str(y))
    monkeypatch.setenv("STREAMADAPT_PIPELINE__ATTRIBUTION_WINDOW_S", "5")
    assert load_settings().pipeline.attribution_window_s == 5  # env wins over the file


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"task": "vision"}, "task = 'vision': Input should be 'forecast' or 'ctr'"),
        ({"pipeline": {"batch_size": 0}}, "pipeline.batch_size = 0"),
        ({"pipeline": {"missing_label": "zero"}}, "'negative' or 'drop'"),
        ({"model": "gpt"}, "model 'gpt' is not a 'forecast' model; valid choices:"),
        ({"kafka": {"client": "java"}}, "kafka.client = 'java'"),
        ({"kafka": {"security_protocol": "SASL_SSL", "sasl_password": "pw"}},
         "needs sasl_mechanism"),
        ({"pipline": {}}, "pipline"),
    ],
)
def test_bad_values_name_the_field(over, message):
    with pytest.raises(SettingsError) as err:
        load_settings(**over)
    assert message in str(err.value)
    assert "pw" not in str(err.value).replace("password", "")


def test_bad_file(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "s.ini"
    bad.write_text("x")
    with pytest.raises(SettingsError, match="valid choices: .yaml, .yml, .toml"):
        load_settings(bad)


def test_drift_settings_are_on_and_match_the_monitor_defaults():
    import inspect

    from streamadapt.monitor import DriftMonitor, monitor_from_settings
    from streamadapt.settings import DriftSettings

    params = inspect.signature(DriftMonitor.__init__).parameters
    drift = DriftSettings()
    assert drift.enabled
    for name, value in drift.monitor_params().items():
        if name in ("on_loss", "on_input"):
            continue  # resolved per task
        default = params[name].default
        assert (tuple(default) if isinstance(default, list | tuple) else default) == value, name
    mon = monitor_from_settings(drift, "forecast")
    assert mon is not None and mon.on_input == ("tta",)
    assert monitor_from_settings(DriftSettings(enabled=False), "ctr") is None


@pytest.mark.parametrize(
    ("drift", "message"),
    [
        ({"detector": "cusum"}, "drift.detector = 'cusum'"),
        ({"on_loss": ["retrain"]}, "drift.on_loss.0 = 'retrain'"),
        ({"input_stat": "volume"}, "unknown input_stat 'volume'; valid choices:"),
        ({"seasons": [-1]}, "seasons must be positive"),
        ({"judge_window": 0}, "drift.judge_window = 0"),
        ({"delta": 0.1}, "drift.delta"),
    ],
)
def test_bad_drift_settings_name_the_field(drift, message):
    with pytest.raises(SettingsError) as err:
        load_settings(drift=drift)
    assert message in str(err.value)
