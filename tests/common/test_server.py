"""The shared runtime: health that means something, reflection, metrics, graceful shutdown."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from graspfleet.v1 import episode_store_pb2
from models.episodes import synthetic as samples
from services.common.config import ServerConfig
from services.common.server import LIVENESS, ServiceServer, stop_signals
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import SERVICE_NAME, create_server
from services.fleet.process import ServiceProcess
from tests.fixtures.waiting import until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            .status
        )


@pytest.fixture
def store(tmp_path):
    server = create_server(
        EpisodeStoreConfig(port=0, data_dir=str(tmp_path), metrics_port=0, grace_s=5)
    )
    yield server
    server.stop(grace_s=0)


def test_not_serving_until_ready_then_serving():
    server = ServiceServer(
        "probe", ServerConfig(port=0), register=lambda s: None, service_names=["x.Probe"]
    )
    try:
        assert _health(server.address) == NOT_SERVING
        assert _health(server.address, "x.Probe") == NOT_SERVING
        server.set_serving(True)
        assert _health(server.address) == SERVING
        assert _health(server.address, "x.Probe") == SERVING
    finally:
        server.stop(grace_s=0)


def test_liveness_stays_serving_while_readiness_follows_its_check():
    """Readiness ("" and each service) follows a periodic check; a hung check counts as failed."""
    server = ServiceServer(
        "probe", ServerConfig(port=0), register=lambda s: None, service_names=["x.Probe"]
    )
    state = {"reason": "warming up"}
    unblock = threading.Event()

    def check() -> str | None:
        if state["reason"] == "hang":
            unblock.wait()
        return state["reason"]

    def readiness() -> set[int]:  # one status, except while it flips
        return {_health(server.address, service) for service in ("", "x.Probe")}

    try:
        assert _health(server.address, LIVENESS) == SERVING  # alive as soon as it listens
        server.watch_readiness(check, period_s=0.2)
        assert readiness() == {NOT_SERVING}
        state["reason"] = None
        assert until(lambda: readiness() == {SERVING}, 30)
        state["reason"] = "hang"  # a database that never answers
        assert until(lambda: readiness() == {NOT_SERVING}, 30)
        state["reason"] = None
        unblock.set()
        assert until(lambda: readiness() == {SERVING}, 30)
        assert _health(server.address, LIVENESS) == SERVING
    finally:
        unblock.set()
        server.stop(grace_s=0)


def test_max_connection_age_makes_clients_reconnect():
    """With max_connection_age_s the server ends connections, so clients spread over replicas."""
    server = ServiceServer(
        "probe",
        ServerConfig(port=0, max_connection_age_s=0.5, grace_s=0.2),
        register=lambda s: None,
        service_names=["x.Probe"],
    )
    states: list[grpc.ChannelConnectivity] = []
    try:
        server.set_serving(True)
        with grpc.insecure_channel(server.address) as channel:
            channel.subscribe(states.append, try_to_connect=False)
            stub = health_pb2_grpc.HealthStub(channel)
            assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
            time.sleep(2.0)
            assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
            # Connectivity callbacks run on their own thread and may trail the call that
            # reconnected: wait for them (on a loaded machine) before closing the channel.
            ready = grpc.ChannelConnectivity.READY
            deadline = time.monotonic() + 10.0
            while states.count(ready) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert states.count(ready) >= 2, states  # connected, aged out, connected again
    finally:
        server.stop(grace_s=0)


def test_reflection_lists_the_services(store):
    with grpc.insecure_channel(store.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for s in next(iter(replies)).list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


def test_metrics_count_and_time_each_rpc_with_its_code(store):
    channel, stub = client.connect(store.address)
    with channel:
        stub.Stats(episode_store_pb2.StatsRequest())
        with pytest.raises(grpc.RpcError):
            stub.GetEpisode(episode_store_pb2.GetEpisodeRequest(episode_id="absent"))
        client.write_episode(stub, samples.sample_episode(1))
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{store.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    service = f'grpc_service="{SERVICE_NAME}"'
    assert (
        f'grpc_server_handled_total{{grpc_code="OK",grpc_method="Stats",{service},grpc_type="unary"}}'
        in text
    )
    assert (
        f'grpc_server_handled_total{{grpc_code="NOT_FOUND",grpc_method="GetEpisode",{service},grpc_type="unary"}}'
        in text
    )
    assert (
        f'grpc_server_handling_seconds_bucket{{grpc_method="WriteEpisode",{service},grpc_type="client_stream",le="0.5"}}'
        in text
    )
    assert 'graspfleet_service_ready{service="episode-store"} 1.0' in text


def test_shutdown_reports_not_serving_and_drains_in_flight_calls(tmp_path):
    store = create_server(
        EpisodeStoreConfig(port=0, data_dir=str(tmp_path), grace_s=5, drain_delay_s=1.0)
    )
    record = samples.sample_episode(5)
    halfway = threading.Event()

    def slow_stream():
        yield episode_store_pb2.WriteEpisodeRequest(header=record.header)
        halfway.set()
        time.sleep(1.0)
        for step in record.steps:
            yield episode_store_pb2.WriteEpisodeRequest(step=step)
        yield episode_store_pb2.WriteEpisodeRequest(outcome=record.outcome)

    channel, stub = client.connect(store.address)
    with channel:
        result: dict = {}
        writer = threading.Thread(
            target=lambda: result.update(r=stub.WriteEpisode(slow_stream(), timeout=10))
        )
        writer.start()
        assert halfway.wait(5)
        stopper = threading.Thread(target=store.stop)
        stopper.start()
        time.sleep(0.3)
        # During the drain delay the server still answers, and says NOT_SERVING,
        # so load balancers and probes move traffic away before calls are refused.
        assert _health(store.address) == NOT_SERVING
        writer.join(10)
        stopper.join(10)
        assert result["r"].num_steps == len(record.steps)
        with pytest.raises(grpc.RpcError) as after:
            stub.Stats(episode_store_pb2.StatsRequest(), timeout=2)
        assert after.value.code() == grpc.StatusCode.UNAVAILABLE


def test_sigterm_stops_a_service_process_cleanly(tmp_path):
    process = ServiceProcess(
        "episode-store", ["store", "serve"], {"data_dir": str(tmp_path / "d")}, tmp_path
    )
    process.start()
    try:
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(30) == 0
        assert '"msg": "stopped"' in process.log_tail()
    finally:
        process.kill()


def test_stop_signals_turn_sigterm_into_a_drain_request():
    # A service installs this before it listens: a SIGTERM that arrives as soon as its port
    # file exists must not end the process with -15 before the drain.
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = stop_signals()
        assert not stop.is_set()
        signal.raise_signal(signal.SIGTERM)
        assert stop.wait(5)
        again = stop_signals()
        signal.raise_signal(signal.SIGINT)
        assert again.wait(5)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_missing_setting_stops_the_process_with_a_message(tmp_path):
    process = ServiceProcess(
        "episode-store", ["store", "serve"], {"data_dir": "", "max_steps": "0"}, tmp_path
    )
    with pytest.raises(RuntimeError, match="exited with code 2") as failed:
        process.start(timeout_s=30)
    assert "configuration error: data_dir is required" in str(failed.value)
