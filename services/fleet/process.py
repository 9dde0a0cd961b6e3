"""graspfleet services as child processes, and the local fleet of them.

`ServiceProcess` is one service: start, wait until SERVING, stop, kill. `Fleet`
starts them on loopback, has its Prometheus scrape each, and stops them in
reverse order.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import upstream
from services.fleet.prometheus import LocalPrometheus

PR_SET_PDEATHSIG = 1  # linux/prctl.h


# The environment variable that asks a child started by ServiceProcess to end with its parent.
PARENT_ENV = "GRASPFLEET_END_WITH_PARENT"


def end_with_parent_if_asked() -> None:
    """Has a SIGTERM reach this process when its parent dies, if the parent asked for it.

    `graspfleet` calls it first thing; PARENT_ENV holds the parent's pid.

    A test run killed by its timeout or an experiment killed with SIGKILL would
    otherwise leave its services running, holding ports, CPU and files. The child
    does it itself, after exec: a `preexec_fn` would run Python in a forked copy of
    a parent whose gRPC threads are mid-call, and gRPC's fork handlers then abort
    the child now and then ("epoll_wait error: Bad file descriptor"). The variable
    is removed at once, so the services this one starts are not affected. (The
    signal follows the parent thread that started the child: fleets are started
    from the main thread.)
    """
    parent = os.environ.pop(PARENT_ENV, "")
    if not parent or sys.platform != "linux":
        return
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        return  # refused: the old behaviour, no worse
    if os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died before prctl took effect


class ServiceProcess:
    """A service started with `python -m services.cli <command> --port 0 --port-file ...`.

    Args:
        name: Used for the log file name.
        command: CLI words after `graspfleet`, e.g. ["store", "serve"].
        flags: Service flags ({"data_dir": "..."} becomes --data-dir ...).
        workdir: Holds the port file and the log.
    """

    def __init__(
        self,
        name: str,
        command: list[str],
        flags: dict[str, str],
        workdir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.command = command
        self.flags = dict(flags)
        # Extra environment of the child (its clients' TLS settings); the health checks
        # here dial it with the same settings.
        self.env = dict(env or {})
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port_file = self.workdir / f"{name}.port"
        self.log_path = self.workdir / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None

    @property
    def address(self) -> str:
        """The service's gRPC host:port.

        Raises:
            RuntimeError: the service is not serving.
        """
        if self.port is None:
            raise RuntimeError(f"{self.name} is not serving")
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0, require_serving: bool = True) -> ServiceProcess:
        """Starts the process and waits until its health service answers (and says SERVING, if required).

        A predictor with no model yet answers NOT_SERVING: start it with
        `require_serving=False` and wait for SERVING once a model is published.
        """
        self.port_file.unlink(missing_ok=True)
        self.port_file.with_name(self.port_file.name + ".metrics").unlink(missing_ok=True)
        flags = {"port": "0", "port_file": str(self.port_file), **self.flags}
        argv = [sys.executable, "-m", "services.cli", *self.command]
        for key, value in flags.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
            PARENT_ENV: str(os.getpid()),
            **self.env,
        }
        # A session of its own: Ctrl-C in the terminal reaches the fleet's parent only,
        # which then writes its report and stops the services in order.
        self.process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        self.port = None
        self.wait_ready(timeout_s, require_serving)
        return self

    def wait_ready(self, timeout_s: float, require_serving: bool = True) -> None:
        """Waits for the port file and a health answer (SERVING if required)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode}; see {self.log_path}:\n"
                    + self.log_tail()
                )
            if self.port is None and self.port_file.exists():
                self.port = int(self.port_file.read_text().strip() or 0) or None
            if self.port is not None and (self.serving() if require_serving else self.answers()):
                metrics_file = self.port_file.with_name(self.port_file.name + ".metrics")
                if metrics_file.exists():
                    self.metrics_port = int(metrics_file.read_text().strip())
                return
            time.sleep(0.1)
        raise TimeoutError(
            f"{self.name} did not report SERVING within {timeout_s:.0f} s; see {self.log_path}"
        )

    def _health(self) -> int | None:
        try:
            with upstream.channel(
                self.address,
                tls_ca=self.env.get(upstream.TLS_CA_ENV, ""),
                tls_client_dir=self.env.get(upstream.TLS_CLIENT_DIR_ENV, ""),
            ) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1.0
                )
            return reply.status
        except grpc.RpcError:
            return None

    def serving(self) -> bool:
        """True when the health service answers SERVING."""
        return self._health() == health_pb2.HealthCheckResponse.SERVING

    def answers(self) -> bool:
        """True when the health service answers at all."""
        return self._health() is not None

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then wait for a graceful exit (SIGKILL after `timeout_s`); returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        """SIGKILL: the crash a pod sees when its node dies."""
        if self.process is None:
            return 0
        self.process.kill()
        return self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        """The last `lines` lines of the service's log ("" before it wrote one)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


# The scrape job of each `graspfleet <service> serve`, named as the ServiceMonitors name
# them (app.kubernetes.io/name): the rules match these names.
JOBS = {
    "store": "episode-store",
    "predictor": "grasp-predictor",
    "planner": "servo-planner",
    "refiner": "refiner",
    "sim-farm": "sim-farm",
    "trainer": "trainer",
    "agent": "robot-agent",
}


class Fleet:
    """The local fleet's processes and its Prometheus, stopped in reverse order on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.processes: list[ServiceProcess] = []
        self.prometheus: LocalPrometheus | None = None

    def start_prometheus(self) -> None:
        """Prometheus with the deployment's rules, scraping every service started from now."""
        if not LocalPrometheus.available():
            print("  no prometheus binary (make sysdeps installs it): metrics not recorded")
            return
        self.prometheus = LocalPrometheus(self.workdir / "prometheus").start(
            sorted(set(JOBS.values()))
        )
        print(f"  prometheus on {self.prometheus.url}", flush=True)

    def start(
        self, name: str, command: list[str], flags: dict, require_serving: bool = True
    ) -> ServiceProcess:
        """Starts a service, waits until it serves, and has Prometheus scrape its metrics."""
        flags = {"log_format": "text", "metrics_port": "0", **flags}
        process = ServiceProcess(name, command, flags, self.logs)
        print(f"  starting {name} ...", flush=True)
        process.start(timeout_s=120, require_serving=require_serving)
        self.processes.append(process)
        print(f"  {name} on {process.address}", flush=True)
        job = JOBS.get(command[0])
        if self.prometheus is not None and job and process.metrics_port:
            self.prometheus.scrape(job, f"127.0.0.1:{process.metrics_port}")
        return process

    def stop(self) -> None:
        """Stops the services in reverse order of start, then Prometheus."""
        for process in reversed(self.processes):
            process.stop()
        if self.prometheus is not None:
            self.prometheus.stop()
