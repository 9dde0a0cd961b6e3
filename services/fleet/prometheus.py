"""A local Prometheus for the local fleet: the deployment's own rules, every service scraped.

`make run` starts one beside its services (the `prometheus` binary that `make
sysdeps` installs), so the success rates per arm and model version, canary
against stable, and the rollout's decisions can be queried while the fleet
runs, with exactly the recording rules and alerts that the Prometheus Operator
loads on a cluster (k8s/components/prometheus-operator/prometheusrule.yaml,
the one copy of them). Scrape jobs are named as the ServiceMonitors name them,
so the rules' label matchers hold; targets are file-discovered, so arms that
start later are scraped from the next refresh on.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from services.common.files import write_atomically

ROOT = Path(__file__).resolve().parents[2]
RULES_SOURCE = ROOT / "k8s" / "components" / "prometheus-operator" / "prometheusrule.yaml"
RULE_FILE_NAME = "graspfleet.rules.yaml"


def rule_groups() -> list[dict]:
    """spec.groups of the PrometheusRule: what Prometheus evaluates."""
    return yaml.safe_load(RULES_SOURCE.read_text())["spec"]["groups"]


def write_rule_file(folder: Path) -> Path:
    """Writes the groups as a plain Prometheus rule file into `folder`; returns its path."""
    path = Path(folder) / RULE_FILE_NAME
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def _free_port() -> int:
    # Prometheus cannot report a port it chose itself; ask the kernel for a free one.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPrometheus:
    """One Prometheus process with its state under `workdir`.

    Args:
        workdir: Config, rule file, targets and TSDB go here.
        interval_s: Scrape and rule-evaluation interval.
    """

    def __init__(self, workdir: Path, interval_s: float = 2.0) -> None:
        # Absolute: Prometheus reads the file_sd paths relative to its config file.
        self.workdir = Path(workdir).resolve()
        self.interval_s = interval_s
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.targets: dict[str, list[str]] = {}

    @staticmethod
    def available() -> bool:
        """Whether a `prometheus` binary is on the PATH."""
        return shutil.which("prometheus") is not None

    @property
    def url(self) -> str:
        """Prometheus's HTTP address on this machine."""
        return f"http://127.0.0.1:{self.port}"

    def scrape(self, job: str, address: str) -> None:
        """Adds a metrics endpoint (host:port) to `job`; picked up without a restart."""
        self.targets.setdefault(job, []).append(address)
        self._write_targets(job)

    def _write_targets(self, job: str) -> None:
        path = self.workdir / "targets" / f"{job}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps([{"targets": self.targets.get(job, [])}]))

    def start(self, jobs: list[str], timeout_s: float = 60.0) -> LocalPrometheus:
        """Starts Prometheus with a scrape job (file-discovered targets) for each of `jobs`.

        Raises:
            RuntimeError: the binary is missing, or it did not get ready in time.
        """
        if not self.available():
            raise RuntimeError("no prometheus binary on PATH: `make sysdeps` installs it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        rules = write_rule_file(self.workdir)
        for job in jobs:
            self._write_targets(job)
        interval = f"{self.interval_s:g}s"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": job,
                    "file_sd_configs": [{"files": [str(self.workdir / "targets" / f"{job}.json")]}],
                }
                for job in jobs
            ],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = _free_port()
        log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"prometheus did not get ready (see {self.workdir / 'prometheus.log'})"
                )
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def api(self, path: str, **params: str) -> dict:
        """The data of a successful HTTP API answer (`query`, `rules`, ...).

        Raises:
            RuntimeError: Prometheus answered with an error.
        """
        url = f"{self.url}/api/v1/{path}?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant query: (labels, value) of each series."""
        result = self.api("query", query=promql)["result"]
        return [(r["metric"], float(r["value"][1])) for r in result]

    def stop(self) -> None:
        """Stops Prometheus: SIGTERM, then SIGKILL after 30 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
