"""The sim-farm's settings, and those of one shard run by `graspfleet sim-farm shard`."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import (
    ConfigError,
    ServerConfig,
    check_address,
    check_job_settings,
    check_required,
    setting,
)

BACKENDS = ("local", "kubernetes")


@dataclass(frozen=True)
class SimFarmConfig(ServerConfig):
    """Sim-farm: collections of simulated grasp attempts, as local workers or Kubernetes Jobs."""

    port: int = setting(50052, "gRPC port; 0 picks a free one (see port_file).")
    store_address: str = setting("", "episode-store host:port.", required=True)
    planner_address: str = setting("", "servo-planner host:port, for CEM and ε-mix collection.")
    workers: int = setting(
        2,
        "Shards running at once: local worker processes (all collections together), or the "
        "pods each collection's Job runs at once (its parallelism).",
    )
    spool_dir: str = setting(
        "var/sim-farm/spool", "Where episodes wait while the store is unreachable."
    )
    spool_max_bytes: int = setting(
        2 * 1024**3,
        "Spool size (all shards together) at which workers pause until the store catches up.",
    )
    upload_stall_s: float = setting(
        300.0,
        "A shard fails when the store takes none of its spooled episodes for this long, seconds "
        "(the episodes stay spooled and are sent when the farm next starts).",
    )
    max_episodes: int = setting(100_000, "Largest collection accepted, episodes.")
    max_active_collections: int = setting(
        8,
        "Collections pending or running at once; another is refused with RESOURCE_EXHAUSTED "
        "until one ends (each can create a Job of `workers` pods).",
    )
    plan_timeout_s: float = setting(5.0, "Deadline of one PlanStep for CEM collection, seconds.")
    refiner_address: str = setting(
        "", "refiner host:port, for collections that transform images before planning (RCAN)."
    )
    collection_backend: str = setting(
        "local",
        "Where shards run: local (worker processes of this farm) or kubernetes (one Indexed "
        "Job per collection, one pod per shard, writing straight to the store).",
    )
    poll_interval_s: float = setting(
        2.0, "kubernetes: how often the Jobs and the store's episode counts are read, seconds."
    )
    k8s_api: str = setting(
        "auto", "kubernetes: how to reach the API server: auto, in-cluster or kubeconfig."
    )
    k8s_namespace: str = setting("graspfleet", "kubernetes: namespace of the collections' Jobs.")
    k8s_image: str = setting(
        "graspfleet:latest", "kubernetes: container image of the shard pods (the farm's own)."
    )
    k8s_command: tuple[str, ...] = setting(
        ("graspfleet",),
        "kubernetes: the shard container's program before `sim-farm shard` (comma-separated).",
    )
    k8s_service_account: str = setting(
        "graspfleet-sim-farm-shard",
        "kubernetes: service account of the shard pods (they need no API access).",
    )
    k8s_cpu: str = setting("1", "kubernetes: CPU request (and limit) of a shard pod.")
    k8s_memory: str = setting("2Gi", "kubernetes: memory request (and limit) of a shard pod.")
    k8s_tls_secret: str = setting(
        "graspfleet-tls",
        "kubernetes: Secret with the CA certificate (ca.crt) that shard pods trust when the "
        "farm itself dials TLS (GRASPFLEET_TLS_CA set, as the tls component does): mounted at "
        "/etc/graspfleet/tls, with GRASPFLEET_TLS_CA pointing at it.",
    )
    k8s_ttl_s: int = setting(
        86400, "kubernetes: seconds a finished Job is kept before Kubernetes deletes it."
    )
    k8s_deadline_s: int = setting(
        86400,
        "kubernetes: activeDeadlineSeconds of a collection's Job (the admission policy "
        "requires one); 0 for none.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_address("store_address", self.store_address)
        if self.max_active_collections < 1 or self.max_episodes < 1:
            raise ConfigError("max_active_collections and max_episodes must be at least 1")
        if self.planner_address:
            check_address("planner_address", self.planner_address)
        if self.refiner_address:
            check_address("refiner_address", self.refiner_address)
        if self.workers < 1 or self.max_episodes < 1:
            raise ConfigError("workers and max_episodes must be at least 1")
        if self.spool_max_bytes < 1 or self.upload_stall_s <= 0:
            raise ConfigError(
                f"spool_max_bytes={self.spool_max_bytes} and upload_stall_s="
                f"{self.upload_stall_s} must be positive"
            )
        if self.collection_backend not in BACKENDS:
            raise ConfigError(
                f"collection_backend={self.collection_backend!r}: use one of {', '.join(BACKENDS)}"
            )
        self._check_kubernetes()

    def _check_kubernetes(self) -> None:
        """The kubernetes settings, checked whichever backend runs: a typo fails at once."""
        if not self.poll_interval_s > 0:
            raise ConfigError(f"poll_interval_s={self.poll_interval_s} must be positive")
        # The farm has no Jobs without an API server, and its shards dial TLS with the CA of
        # this Secret whenever the farm does.
        check_job_settings(
            self,
            "`sim-farm shard`",
            api_modes=("auto", "in-cluster", "kubeconfig"),
            required_names=("k8s_service_account", "k8s_tls_secret"),
        )

    @property
    def shard_spool_bytes(self) -> int:
        """One shard's share of the spool: the cap at which it waits for the store."""
        return max(1, self.spool_max_bytes // self.workers)


@dataclass(frozen=True)
class ShardConfig:
    """`graspfleet sim-farm shard`: one shard of a collection, as a pod of its Indexed Job runs it.

    The collection's plan (the same for every shard) comes as JSON; the shard is
    the pod's completion index. Where episodes go and plans come from are the
    farm's settings, handed on in the pod's environment.
    """

    plan: str = setting(
        "", "The collection's plan, JSON (services/sim_farm/plan.py).", required=True
    )
    shard: int = setting(-1, "The shard to run; -1 reads JOB_COMPLETION_INDEX (set by Kubernetes).")
    store_address: str = setting("", "episode-store host:port.", required=True)
    planner_address: str = setting("", "servo-planner host:port, for CEM and ε-mix collection.")
    refiner_address: str = setting("", "refiner host:port, for collections with an RCAN transform.")
    plan_timeout_s: float = setting(5.0, "Deadline of one PlanStep for CEM collection, seconds.")
    spool_dir: str = setting("var/sim-farm/spool", "Where episodes wait on their way to the store.")
    spool_max_bytes: int = setting(
        1024**3, "Spool size at which the shard pauses until the store catches up."
    )
    upload_stall_s: float = setting(
        300.0, "The shard fails when the store takes none of its spooled episodes for this long, s."
    )
    termination_log: str = setting(
        "",
        "File a failed shard writes its error to (Kubernetes shows /dev/termination-log as the "
        "pod's termination message, which the farm reports); empty: none.",
    )
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR.")
    log_format: str = setting("json", "json (one object a line) or text.")

    def __post_init__(self) -> None:
        check_required(self)
        check_address("store_address", self.store_address)
        for name in ("planner_address", "refiner_address"):
            if getattr(self, name):
                check_address(name, getattr(self, name))
        if self.spool_max_bytes < 1 or self.upload_stall_s <= 0 or self.plan_timeout_s <= 0:
            raise ConfigError("spool_max_bytes, upload_stall_s and plan_timeout_s must be positive")
        if self.shard < -1:
            raise ConfigError(f"shard={self.shard}; a shard index is at least 0")
