"""Grasp-predictor serving: Predict latency and throughput through the TF Serving API.

The default-profile grasp network is exported and served by a predictor running
as its own process; clients in this process call Predict with the stock
`PredictionServiceStub`, each request one image pair (64x64) x 64 candidate
motions (one CEM iteration). Reported: the in-process model call (the floor),
then p50/p99 latency and requests/s for 1, 8 and 32 concurrent clients with
server-side batching on and off.

    python -m bench.predictor [--seconds 4] [--clients 1 8 32]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from models.grasp_success import export
from models.grasp_success.model import ModelConfig, build_model
from services.fleet.process import ServiceProcess

MOTIONS = 64
SIZE = 64


def _inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    angle = rng.uniform(-1.5, 1.5, (1, MOTIONS))
    return {
        "x0": rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8),
        "xt": rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8),
        "motions": np.concatenate(
            [rng.normal(0, 5, (1, MOTIONS, 3)), np.sin(angle)[..., None], np.cos(angle)[..., None]],
            axis=-1,
        ).astype(np.float32),
    }


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    ms = np.array(samples_s) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def floor(path: Path, calls: int) -> tuple[float, float]:
    """(p50, p99) milliseconds of in-process signature calls: the floor under served latency."""
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    inputs = {k: tf.constant(v) for k, v in _inputs(np.random.default_rng(0)).items()}
    for _ in range(10):
        signature(**inputs)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        signature(**inputs)["success_probability"].numpy()
        times.append(time.perf_counter() - start)
    return _percentiles(times)


def load(address: str, clients: int, seconds: float) -> dict:
    """Requests/s, latency percentiles and errors of `clients` clients calling Predict."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "grasp_success"
    for name, value in _inputs(np.random.default_rng(1)).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    errors = []

    def client() -> None:
        with grpc.insecure_channel(address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(request, timeout=30)  # connect and warm up
            while time.monotonic() < stop:
                start = time.perf_counter()
                try:
                    stub.Predict(request, timeout=30)
                except grpc.RpcError as err:
                    errors.append(err.code().name)
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    begin = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - begin
    p50, p99 = _percentiles(latencies)
    return {
        "clients": clients,
        "rps": len(latencies) / elapsed,
        "p50": p50,
        "p99": p99,
        "errors": len(errors),
    }


def main(argv: list[str] | None = None) -> int:
    """Measures the floor, then each client count with and without batching; prints the table."""
    parser = argparse.ArgumentParser(prog="bench.predictor", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--calls", type=int, default=300, help="in-process calls for the floor")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-predictor-") as tmp:
        _, path = export.export_model(
            build_model(ModelConfig(profile="default")), tmp, metadata={"recipe": "bench"}
        )
        floor_p50, floor_p99 = floor(path, args.calls)
        rows = []
        for batching in (True, False):
            flags = {
                "model_base_path": tmp,
                "enable_batching": str(batching).lower(),
                "max_queue": "1024",
                "log_format": "text",
            }
            predictor = ServiceProcess(
                "grasp-predictor", ["predictor", "serve"], flags, Path(tmp) / "logs"
            ).start()
            try:
                for clients in args.clients:
                    rows.append(
                        {"batching": batching, **load(predictor.address, clients, args.seconds)}
                    )
                    r = rows[-1]
                    print(
                        f"batching={batching} clients={clients}: {r['rps']:.0f} req/s, p50 {r['p50']:.1f} ms, "
                        f"p99 {r['p99']:.1f} ms",
                        file=sys.stderr,
                    )
            finally:
                predictor.stop()
    print(
        f"\nmachine: {platform.machine()}, {platform.processor() or 'cpu'}; request: 1 pair {SIZE}x{SIZE} x {MOTIONS} motions"
    )
    print(f"in-process model call (floor): p50 {floor_p50:.2f} ms, p99 {floor_p99:.2f} ms\n")
    print("| batching | clients | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {'on' if r['batching'] else 'off'} | {r['clients']} | {r['rps']:.0f} | {r['p50']:.1f} | "
            f"{r['p99']:.1f} | {r['errors']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
