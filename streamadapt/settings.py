"""Service settings: one pydantic-settings class, from the environment and an optional file.

Sources, highest priority first: keyword arguments (the command line), environment variables
``STREAMADAPT_<FIELD>`` (nested with ``__``, e.g. ``STREAMADAPT_KAFKA__BOOTSTRAP_SERVERS``),
a YAML or TOML file named by ``STREAMADAPT_CONFIG`` (or ``--config``), then the defaults.
Credentials are :class:`~pydantic.SecretStr` and never printed. A bad value fails at start
with a :class:`SettingsError` naming the field, the value and the valid choices.

>>> s = load_settings(task="ctr", model="river-logreg")
>>> s.task, s.pipeline.batch_size
('ctr', 256)
>>> load_settings(task="vision")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
streamadapt.settings.SettingsError: invalid setting task = 'vision': Input should be ...
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

__all__ = ["DEFAULT_MODEL", "DriftSettings", "Settings", "SettingsError", "load_settings"]


#: The model served when none is named, per task.
DEFAULT_MODEL = {"forecast": "liquid", "ctr": "ctr-net+reloop2"}


class SettingsError(ValueError):
    """A setting has a bad value; the message names the field and the valid choices."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PipelineSettings(_Section):
    batch_size: int = Field(256, gt=0, le=100_000, description="events per micro-batch")
    window: int = Field(12, gt=0, le=4096, description="recent loads per forecasting input")
    max_keys: int = Field(100_000, gt=0, description="links remembered (LRU)")
    attribution_window_s: float = Field(
        3600.0, gt=0, description="how long a click prediction waits for its label"
    )
    missing_label: Literal["negative", "drop"] = "negative"
    label_grace_s: float | None = Field(
        None, ge=0, description="how long (impression time) a click label read before its "
        "impression waits for it before it becomes an orphan dead letter; None: the "
        "attribution window"
    )


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535, description="0 picks a free port")
    enabled: bool = True


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    client: Literal["kafka-python", "confluent-kafka"] = "kafka-python"
    input_topics: tuple[str, ...] = ("streamadapt.events",)
    output_topic: str = "streamadapt.predictions"
    dead_letter_topic: str = "streamadapt.dead-letters"
    group_id: str = "streamadapt"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None
    session_timeout_ms: int = Field(10_000, gt=0)
    heartbeat_interval_ms: int = Field(1_000, gt=0)
    max_poll_interval_ms: int = Field(300_000, gt=0)
    poll_timeout_s: float = Field(0.5, gt=0)
    max_record_bytes: int = Field(1 << 20, gt=0)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    partition_state: bool = Field(
        True, description="each key's state moves with its partition on rebalance; one set "
        "of weights per replica, averaged across replicas through the checkpoint store"
    )
    replica_id: str | None = Field(
        None, description="this replica's name in the checkpoint store; None: the host name"
    )
    weight_sync: Literal["average", "deltas", "off"] = Field(
        "average", description="how the replicas' model weights follow each other at each "
        "checkpoint: average, add each other's updates, or not at all (partition state only)"
    )
    flush_timeout_s: float = Field(10.0, gt=0, description="a produce flush waits this long")
    retry_backoff_s: float = Field(0.2, gt=0, description="first wait when the broker is away")
    retry_backoff_max_s: float = Field(5.0, gt=0, description="longest wait between retries")
    linger_ms: int = Field(5, ge=0, description="producer batching delay")
    acks: Literal["all", "1", "0"] = Field(
        "all", description="acknowledgements a produce waits for: all in-sync replicas, the "
        "leader only, or none (docs/kafka.md, Delivery settings)"
    )
    enable_idempotence: bool = Field(
        True, description="idempotent producers (no duplicates from the producer's own "
        "retries); needs acks=all, and is off with acks 1 or 0 unless set explicitly"
    )
    fetch_max_wait_ms: int = Field(20, ge=0, description="longest a fetch waits for data")
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and (
            self.sasl_mechanism is None or self.sasl_username is None
            or self.sasl_password is None
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                "sasl_username and sasl_password"
            )
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        if (self.enable_idempotence and self.acks != "all"
                and "enable_idempotence" in self.model_fields_set):
            raise ValueError(f"enable_idempotence=true needs acks='all', got acks="
                             f"{self.acks!r}; valid choices: acks='all', or "
                             "enable_idempotence=false")
        return self

    @field_validator("acks", mode="before")
    @classmethod
    def _acks_text(cls, v: Any) -> Any:
        """``acks: 1`` in a YAML file is a number, and -1 is Kafka's other name for all."""
        v = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
        return "all" if v == "-1" else v


class CheckpointSettings(_Section):
    dir: str | None = Field(None, description="the directory of store=dir; None: no "
                            "checkpoints with that store")
    keep: int = Field(3, gt=0)
    interval_s: float = Field(30.0, ge=0, description="at most one checkpoint per interval")
    store: Literal["dir", "kafka"] = Field(
        "dir", description="where checkpoints go: the directory `dir` (shared by replicas "
        "through a volume), or a compacted topic of the Kafka cluster (needs --kafka)"
    )
    topic: str | None = Field(
        None, min_length=1, description="the topic of store=kafka; None: <kafka.group_id>.state"
    )
    hmac_key: SecretStr | None = Field(
        None, description="signs checkpoints with HMAC-SHA256 and refuses any not signed with "
        "it (at least 16 characters); None: unsigned checkpoints behind a checksum"
    )

    @model_validator(mode="after")
    def _key_long_enough(self) -> CheckpointSettings:
        # the error names the field, never the value (a model-level error shows no input)
        key = self.hmac_key
        if key is not None and len(key.get_secret_value()) < 16:
            raise ValueError(
                f"hmac_key is {len(key.get_secret_value())} characters long; use at least "
                "16 (e.g. the output of `openssl rand -hex 32`), or leave it unset"
            )
        return self


_DETECTORS = Literal["adwin", "page-hinkley", "kswin", "ddm", "eddm", "hddm-a", "hddm-w",
                     "fhddm"]
_ACTION = Literal["tta", "lr_boost", "memory_refresh"]


class DriftSettings(_Section):
    """The drift monitor (:class:`~streamadapt.monitor.DriftMonitor`), on by default.

    Every field is a monitor parameter of the same name (``docs/drift.md``).
    ``on_loss``/``on_input`` left at ``None`` take the task's default policy
    (:data:`~streamadapt.drift.policy.DEFAULT_ACTIONS`): the actions the task's default
    model has hooks for.
    """

    enabled: bool = Field(True, description="watch for drift and adapt the served model")
    detector: _DETECTORS = "adwin"
    signals: tuple[Literal["loss", "input"], ...] = ("loss", "input")
    input_stat: str | None = Field(
        None, description="input statistic; None: log_load (forecast), numeric_mean (ctr)")
    seasons: tuple[float, ...] = Field(
        (86_400.0,), description="cycle lengths (s) the input and loss signals are "
        "compared against; () for none")
    season_signals: tuple[Literal["loss", "input"], ...] = Field(
        ("input",), description="signals compared against the same phase of earlier cycles")
    season_bin: float = Field(3600.0, gt=0, description="phase bin width of the cycles (s)")
    season_alpha: float = Field(0.3, gt=0, le=1, description="weight of the newest cycle")
    warmup: int = Field(5000, ge=10, description="events per signal to calibrate on")
    burn_in: int = Field(500, ge=0, description="events per signal ignored first")
    target_false_alarms: float = Field(1.0, ge=0, description="per 10k events")
    n_replay: int = Field(20_000, ge=1000, description="calibration replay length")
    calibration_block: int = Field(1000, ge=1)
    refractory: int = Field(1000, ge=0, description="events without a new detection "
                            "after one")
    on_loss: tuple[_ACTION, ...] | None = None
    on_input: tuple[_ACTION, ...] | None = None
    tta_events: int = Field(2000, ge=1)
    lr_boost: float = Field(3.0, gt=0)
    lr_boost_events: int = Field(2000, ge=1)
    judge_window: int = Field(500, ge=1)
    confirm_blocks: int = Field(2, ge=0)
    tolerance: float = Field(0.0, ge=0)
    collapse_ratio: float = Field(0.2, ge=0, le=1)
    max_wait: int = Field(20_000, ge=1)
    shadow_learns: bool = True
    nhl_eta: float = Field(1e-3, ge=0)
    nhl_temperature: float = Field(1.0, gt=0)
    nhl_lr: float = Field(1e-2, ge=0)
    nhl_max_step: float = Field(0.01, ge=0)
    nhl_max_drift: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _check_stat(self) -> DriftSettings:
        from streamadapt.drift.signals import INPUT_STATS

        stats = sorted({name for by_task in INPUT_STATS.values() for name in by_task})
        if self.input_stat is not None and self.input_stat not in stats:
            raise ValueError(f"unknown input_stat {self.input_stat!r}; valid choices: "
                             f"{', '.join(stats)}")
        if any(not p > 0 for p in self.seasons):
            raise ValueError(f"seasons must be positive lengths in seconds, got "
                             f"{list(self.seasons)}")
        return self

    def monitor_params(self) -> dict[str, Any]:
        """The :class:`~streamadapt.monitor.DriftMonitor` arguments (``on_*`` unresolved)."""
        return self.model_dump(exclude={"enabled"})


class Settings(BaseSettings):
    """Everything the service reads at start."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMADAPT_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    task: Literal["forecast", "ctr"] = "forecast"
    model: str = Field(
        None, description="a registered model name; default: DEFAULT_MODEL of the task"
    )
    dataset: str = Field("linkload", description="built-in stream for the embedded run")
    seed: int = 0
    torch_threads: int = Field(
        1, ge=0, description="torch intra-op threads; 0 keeps torch's default (all cores)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    pipeline: PipelineSettings = PipelineSettings()
    http: HttpSettings = HttpSettings()
    kafka: KafkaSettings = KafkaSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    model_params: dict[str, Any] = Field(default_factory=dict)
    drift: DriftSettings = DriftSettings()

    @model_validator(mode="before")
    @classmethod
    def _default_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("model") is None:
            task = data.get("task", "forecast")
            data = {**data, "model": DEFAULT_MODEL.get(task, DEFAULT_MODEL["forecast"])}
        return data

    @model_validator(mode="after")
    def _model_matches_task(self) -> Settings:
        from streamadapt.adapters.registry import model_names

        valid = model_names(self.task)
        if self.model not in valid:
            raise ValueError(
                f"model {self.model!r} is not a {self.task!r} model; valid choices: "
                f"{', '.join(sorted(valid))}"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, file_secret_settings)


def _read_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SettingsError(f"settings file {str(p)!r} does not exist")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(text) or {}
    elif p.suffix == ".toml":
        data = tomllib.loads(text)
    else:
        raise SettingsError(
            f"settings file {str(p)!r}: unknown format {p.suffix!r}; valid choices: "
            ".yaml, .yml, .toml"
        )
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {str(p)!r} must hold a mapping at the top level")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; ``overrides`` (nested dicts allowed) win over env and file.

    The environment sits above the file: a value set in ``STREAMADAPT_*`` wins over the
    file, as is usual for container deployments.
    """
    path = config_file or os.environ.get("STREAMADAPT_CONFIG")
    file_values = _read_file(path) if path else {}
    try:
        env_values = EnvSettingsSource(
            Settings, env_prefix="STREAMADAPT_", env_nested_delimiter="__"
        )()
        merged = _merge(_merge(file_values, env_values), overrides)
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        value = err.get("input")
        if isinstance(value, dict) or "password" in loc:
            where = f"setting {loc}" if loc else "settings"  # never echo secrets
        else:
            where = f"setting {loc} = {value!r}" if loc else "settings"
        lines.append(f"invalid {where}: {err['msg']}")
    return "; ".join(lines)
