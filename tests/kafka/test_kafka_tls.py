"""A TLS connection works, with both clients: the service verifies the broker's
certificate against a private CA (and refuses a connection it cannot verify)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from kafkahelp import TOPICS, ServiceProcess, events, prediction_ids, produce, read_topic
from tlsproxy import TlsProxy, make_certificates

from connectors.broker import EmbeddedBroker, create_topics, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from realparts import require_binary  # noqa: E402

pytestmark = pytest.mark.kafka


@pytest.fixture
def tls_broker(tmp_path, tansu_binary):
    ca, cert, key = make_certificates(tmp_path, require_binary("openssl"))
    public = free_port()
    broker = EmbeddedBroker(binary=tansu_binary, advertised_port=public,
                            log_path=str(tmp_path / "broker.log")).start()
    proxy = TlsProxy(public, broker.port, cert, key)
    yield f"127.0.0.1:{public}", ca, proxy
    proxy.close()
    broker.stop()


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_service_over_tls(tls_broker, tmp_path, client):
    bootstrap, ca, proxy = tls_broker
    tls = {"security_protocol": "SSL", "ssl_cafile": ca}
    create_topics(bootstrap, {TOPICS["input"]: 1, TOPICS["output"]: 1, TOPICS["dead"]: 1},
                  **tls)
    n = 300
    produce(bootstrap, TOPICS["input"], events(n), **tls)
    svc = ServiceProcess(bootstrap, tmp_path, client, env={
        "STREAMADAPT_KAFKA__CLIENT": client,
        "STREAMADAPT_KAFKA__SECURITY_PROTOCOL": "SSL",
        "STREAMADAPT_KAFKA__SSL_CAFILE": ca,
    }, args=["--limit", str(n)])
    assert svc.wait(90) == 0, svc.output()[-3000:]
    ids = prediction_ids(read_topic(bootstrap, TOPICS["output"], expect=n, **tls))
    assert sorted(ids) == sorted(f"e{i}" for i in range(n))
    assert proxy.handshakes >= 2


def test_an_unverifiable_certificate_is_refused(tls_broker, tmp_path):
    bootstrap, _, proxy = tls_broker
    (tmp_path / "other").mkdir()
    other_ca, _, _ = make_certificates(tmp_path / "other", require_binary("openssl"))
    before = proxy.handshakes
    svc = ServiceProcess(bootstrap, tmp_path, "refused", env={
        "STREAMADAPT_KAFKA__SECURITY_PROTOCOL": "SSL",
        "STREAMADAPT_KAFKA__SSL_CAFILE": other_ca,
    })
    try:
        time.sleep(6)
        assert not svc.ready() and proxy.handshakes == before
    finally:
        svc.proc.kill()
        svc.wait(10)
