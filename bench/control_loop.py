"""Control-step latency (agent → planner → predictor) and how many arms one predictor serves at 2 Hz.

The predictor (default-profile grasp network) and the planner run as their own
processes. Each simulated arm is a client thread that sends PlanStep requests
(64x64 images, CEM 64/6/3: one image_features and three score_features Predict
calls, batched across arms) on a fixed 2 Hz clock, the rate of one control step
every 0.5 s; an arm that falls behind sends its late steps back to back. For
growing fleets it reports the PlanStep latency, the rate the slowest arm
achieved and whether every arm kept its 2 Hz with p99 under the 0.5 s step
period, with the machine's 1-minute load average at the end of each row (this
benchmark's processes included: other work on the machine shows there).

With --mtls every hop is mutual TLS, as the secure deployment runs it: the
predictor and the planner require client certificates (tls_client_auth), the
planner calls the predictor as `servo-planner`, and each arm presents
`robot-agent/<arm>`'s certificate (one CA made with openssl for the run).

    python -m bench.control_loop [--arms 1 4 8 16 24 32] [--seconds 10] [--mtls]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from graspfleet.v1 import common_pb2, servo_planner_pb2, servo_planner_pb2_grpc
from models.grasp_success import export
from models.grasp_success.model import ModelConfig, build_model
from services.common import upstream
from services.common.certificates import issue, make_ca
from services.common.images import encode_image
from services.fleet.process import ServiceProcess

PERIOD_S = 0.5
SERVERS = ("grasp-predictor", "servo-planner")


def _request(rng: np.random.Generator, arm: int) -> servo_planner_pb2.PlanStepRequest:
    return servo_planner_pb2.PlanStepRequest(
        robot_id=f"arm-{arm}",
        x0=encode_image(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
        xt=encode_image(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
        current_pose=common_pb2.Pose(position_m=common_pb2.Vec3(x=0.6, y=0.07, z=0.3)),
        workspace=common_pb2.Workspace(
            min_m=common_pb2.Vec3(x=0.45, y=-0.12, z=0.08),
            max_m=common_pb2.Vec3(x=0.83, y=0.27, z=0.40),
        ),
        budget_ms=2000,
    )


def fleet_load(address: str, arms: int, seconds: float, tls: dict | None = None) -> dict:
    """Runs `arms` arms for `seconds` of 2 Hz ticks; their latencies, rates and errors."""
    latencies: list[float] = []
    late = [0]
    errors: list[str] = []
    rates: list[float] = []  # per arm: steps answered / time from its first tick to its last answer
    spans: list[tuple[float, float]] = []  # per arm: (first tick, last answer)
    lock = threading.Lock()

    def arm(index: int) -> None:
        rng = np.random.default_rng(index)
        request = _request(rng, index)
        answered = 0
        with upstream.channel(address, **(tls or {"tls_ca": ""})) as channel:
            stub = servo_planner_pb2_grpc.ServoPlannerStub(channel)
            try:
                stub.PlanStep(request, timeout=30)  # connect and warm up
            except grpc.RpcError as err:
                with lock:
                    errors.append(f"warm-up {err.code().name}")
            start = time.monotonic() + rng.uniform(0, PERIOD_S)  # arms are not in phase
            tick = 0
            while start + tick * PERIOD_S <= start + seconds:
                time.sleep(max(0.0, start + tick * PERIOD_S - time.monotonic()))
                tick += 1
                sent = time.perf_counter()
                try:
                    stub.PlanStep(request, timeout=10)
                except grpc.RpcError as err:
                    with lock:
                        errors.append(err.code().name)
                    continue
                elapsed = time.perf_counter() - sent
                answered += 1
                with lock:
                    latencies.append(elapsed)
                    late[0] += elapsed > PERIOD_S
        # `tick` periods on time, or longer if the answers came later.
        with lock:
            rates.append(answered / max(time.monotonic() - start, tick * PERIOD_S))
            spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=arm, args=(i,)) for i in range(arms)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = np.array(latencies or [float("nan")]) * 1000
    return {
        "load": os.getloadavg()[0],
        "errors": len(errors),
        "codes": errors,
        "arms": arms,
        "steps": len(latencies),
        "rate_hz": min(rates),
        # PlanSteps answered per second over the whole run: what the planner and predictor
        # sustain once the fleet asks for more than they can give.
        "fleet_steps_s": len(latencies)
        / (max(end for _, end in spans) - min(start for start, _ in spans)),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "late": late[0] / max(1, len(latencies)),
    }


def _mutual_tls(folder: Path) -> tuple[dict[str, tuple[dict, dict]], dict]:
    """Certificates for every hop: per server (flags, environment), and the arms' channel."""
    ca = make_ca(folder / "ca")
    servers = {}
    for name in SERVERS:
        own = str(issue(folder / name, ca, name))
        flags = {"tls_dir": own, "tls_client_auth": "true"}
        servers[name] = (flags, {upstream.TLS_CA_ENV: str(ca), upstream.TLS_CLIENT_DIR_ENV: own})
    arm = issue(folder / "arm", ca, "robot-agent/bench-arm")
    return servers, {"tls_ca": str(ca), "tls_client_dir": str(arm)}


def main(argv: list[str] | None = None) -> int:
    """Times control steps for each arm count and prints the table; returns the exit status."""
    parser = argparse.ArgumentParser(prog="bench.control_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--arms", type=int, nargs="+", default=[1, 4, 8, 12, 16, 24])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--mtls", action="store_true", help="mutual TLS on every hop")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-control-") as tmp:
        export.export_model(
            build_model(ModelConfig(profile="default")), tmp, metadata={"recipe": "bench"}
        )
        logs = Path(tmp) / "logs"
        plaintext = {name: ({}, {}) for name in SERVERS}, None
        servers, arm_tls = _mutual_tls(Path(tmp) / "pki") if args.mtls else plaintext
        flags, env = servers["grasp-predictor"]
        predictor = ServiceProcess(
            "grasp-predictor", ["predictor", "serve"], {"model_base_path": tmp, **flags}, logs, env
        ).start()
        flags, env = servers["servo-planner"]
        planner = ServiceProcess(
            "servo-planner",
            ["planner", "serve"],
            {"predictor_address": predictor.address, **flags},
            logs,
            env,
        )
        planner.start()
        try:
            for arms in args.arms:
                rows.append(fleet_load(planner.address, arms, args.seconds, arm_tls))
                r = rows[-1]
                print(
                    f"{arms} arms: errors {sorted(set(r['codes']))}, {r['rate_hz']:.2f} Hz (slowest arm), {r['fleet_steps_s']:.1f} steps/s, p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms, "
                    f"{r['late']:.1%} over 0.5 s, load average {r['load']:.1f}",
                    file=sys.stderr,
                )
        finally:
            planner.stop()
            predictor.stop()
    served = max(
        (
            r["arms"]
            for r in rows
            if r["rate_hz"] >= 1.9 and r["p99"] < PERIOD_S * 1000 and not r["errors"]
        ),
        default=0,
    )
    transport = "mutual TLS on every hop" if args.mtls else "plaintext"
    print(
        f"\nmachine: {platform.machine()}; PlanStep = CEM 64/6/3 on 64x64 images; arms tick at "
        f"2 Hz; {transport}\n"
    )
    print(
        "| arms | steps | achieved Hz (slowest arm) | fleet steps/s | p50 ms | p99 ms "
        "| steps over 0.5 s | errors | load average (1 min) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['arms']} | {r['steps']} | {r['rate_hz']:.2f} | {r['fleet_steps_s']:.1f} | {r['p50']:.0f} "
            f"| {r['p99']:.0f} | {r['late']:.1%} | {r['errors']} | {r['load']:.1f} |"
        )
    print(f"\narms served at 2 Hz with p99 under 0.5 s: {served}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
