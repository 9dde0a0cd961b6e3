"""TLS from a mounted certificate folder: real servers, real handshakes, certificates made here."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from graspfleet.v1 import episode_store_pb2
from models.episodes import synthetic as samples
from services.common import upstream
from services.common.config import ConfigError, ServerConfig
from services.common.server import ServiceServer
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server as create_store
from services.grasp_predictor.config import PredictorConfig
from services.grasp_predictor.server import create_server as create_predictor
from services.servo_planner.config import PlannerConfig
from services.servo_planner.server import create_server as create_planner
from tests.fixtures import models
from tests.fixtures.tls import make_certificate
from tests.fixtures.waiting import until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _check(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def _own_channel(address: str, ca: Path) -> grpc.Channel:
    """A TLS channel with its own connections, so no handshake is reused between checks."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    return grpc.secure_channel(
        address, credentials, options=[("grpc.use_local_subchannel_pool", 1)]
    )


@pytest.fixture
def tls_dir(tmp_path) -> Path:
    make_certificate(tmp_path / "tls")
    return tmp_path / "tls"


def test_a_tls_store_answers_tls_clients_and_refuses_plaintext(tmp_path, tls_dir, monkeypatch):
    store = create_store(
        EpisodeStoreConfig(
            port=0, grace_s=0.0, data_dir=str(tmp_path / "store"), tls_dir=str(tls_dir)
        )
    )
    try:
        # The store's own client (as the agents, the farm and the trainer use it) with the CA.
        monkeypatch.setenv(upstream.TLS_CA_ENV, str(tls_dir / "tls.crt"))
        channel, stub = client.connect(store.address)
        with channel:
            client.write_episode(stub, samples.sample_episode(1))
            assert stub.Stats(episode_store_pb2.StatsRequest(), timeout=10).episodes == 1
        monkeypatch.delenv(upstream.TLS_CA_ENV)
        channel, stub = client.connect(store.address)
        with channel, pytest.raises(grpc.RpcError) as plaintext:
            stub.Stats(episode_store_pb2.StatsRequest(), timeout=10)
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        store.stop(grace_s=0)


def test_a_client_that_does_not_trust_the_certificate_is_refused(tmp_path, tls_dir):
    server = ServiceServer(
        "probe", ServerConfig(port=0, tls_dir=str(tls_dir)), lambda s: None, ["x.Probe"]
    )
    try:
        stranger = make_certificate(tmp_path / "other", "someone-else")
        untrusted_channel = upstream.channel(server.address, tls_ca=str(stranger))
        with untrusted_channel, pytest.raises(grpc.RpcError) as untrusted:
            _check(untrusted_channel)
        assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE
        with upstream.channel(server.address, tls_ca=str(tls_dir / "tls.crt")) as channel:
            assert _check(channel) == NOT_SERVING
    finally:
        server.stop(grace_s=0)


def test_a_renewed_certificate_is_used_for_new_connections(tmp_path, tls_dir):
    server = ServiceServer(
        "probe", ServerConfig(port=0, tls_dir=str(tls_dir)), lambda s: None, ["x.Probe"]
    )
    try:
        first = tmp_path / "first.crt"
        first.write_bytes((tls_dir / "tls.crt").read_bytes())
        with _own_channel(server.address, first) as channel:
            assert _check(channel) == NOT_SERVING
        make_certificate(tls_dir, "renewed")  # the Secret is updated in place
        with _own_channel(server.address, tls_dir / "tls.crt") as channel:
            assert _check(channel) == NOT_SERVING
        with _own_channel(server.address, first) as channel, pytest.raises(grpc.RpcError) as old:
            _check(channel)
        assert old.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace_s=0)


def test_the_health_port_serves_plaintext_health_only(tls_dir):
    """Kubelet's grpc probes cannot speak TLS: they get health alone, on its own port."""
    server = ServiceServer(
        "probe",
        ServerConfig(port=0, tls_dir=str(tls_dir), health_port=0),
        lambda s: None,
        ["x.Probe"],
    )
    probe_address = f"127.0.0.1:{server.health_port}"
    try:
        assert server.health_port not in (None, server.port)
        with grpc.insecure_channel(probe_address) as channel:
            assert _check(channel) == NOT_SERVING
            server.set_serving(True)
            assert _check(channel) == SERVING and _check(channel, "x.Probe") == SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.RpcError) as other:
                next(iter(reflection.ServerReflectionInfo(iter([request]), timeout=10)))
            assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError):
            _check(channel)  # the service port itself stays TLS-only
    finally:
        server.stop(grace_s=0)
    with grpc.insecure_channel(probe_address) as channel, pytest.raises(grpc.RpcError):
        _check(channel)


def test_a_tls_dir_without_the_secret_files_stops_the_service(tmp_path):
    (tmp_path / "tls.crt").write_text("only half of the Secret")
    config = ServerConfig(port=0, tls_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="tls.key"):
        ServiceServer("probe", config, lambda s: None, ["x.Probe"])


def test_an_unreadable_ca_is_a_configuration_error(tmp_path, monkeypatch):
    monkeypatch.setenv(upstream.TLS_CA_ENV, str(tmp_path / "missing.crt"))
    with pytest.raises(ConfigError, match="GRASPFLEET_TLS_CA"):
        upstream.channel("127.0.0.1:1")


def test_a_planner_told_so_dials_a_plaintext_predictor_while_serving_tls(
    tmp_path, tls_dir, monkeypatch
):
    """TensorFlow Serving as the predictor stays plaintext under the tls component."""
    models.publish(tmp_path / "models", 1, bias=0.0)
    predictor = create_predictor(
        PredictorConfig(port=0, model_base_path=str(tmp_path / "models"), settle_s=0)
    )
    monkeypatch.setenv(upstream.TLS_CA_ENV, str(tls_dir / "tls.crt"))
    planners = [
        create_planner(
            PlannerConfig(
                port=0,
                predictor_address=predictor.address,
                predictor_plaintext=plaintext,
                tls_dir=str(tls_dir),
                health_check_period_s=0.2,
            )
        )
        for plaintext in (True, False)
    ]
    try:
        for planner, ready in zip(planners, (SERVING, NOT_SERVING), strict=True):
            with upstream.channel(planner.address) as channel:
                until(lambda channel=channel: _check(channel) == SERVING, timeout_s=5)
                assert _check(channel) == ready
    finally:
        for server in (*planners, predictor):
            server.stop(grace_s=0)
