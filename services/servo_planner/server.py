"""The servo-planner's gRPC service: PlanStep = CEM over the predictor, then the servoing decision."""

from __future__ import annotations

import time

import grpc
import numpy as np
from prometheus_client import Counter, Histogram
from tensorflow_serving.apis import get_model_status_pb2, model_pb2, model_service_pb2_grpc

from graspfleet.v1 import common_pb2, servo_planner_pb2, servo_planner_pb2_grpc
from services.common import auth, logs, upstream
from services.common.config import load_config
from services.common.errors import DeadlineExceeded, InvalidArgument
from services.common.images import check_image, decode_image
from services.common.server import ServiceServer, stop_signals
from services.grasp_predictor.client import GraspScoring
from services.servo_planner import cem
from services.servo_planner.config import PlannerConfig

log = logs.get_logger(__name__)

SERVICE_NAME = servo_planner_pb2.DESCRIPTOR.services_by_name["ServoPlanner"].full_name

DECISIONS = Counter("graspfleet_planner_decisions_total", "Commands chosen, by kind.", ["kind"])
ITERATIONS = Histogram(
    "graspfleet_planner_cem_iterations",
    "CEM iterations completed per PlanStep.",
    buckets=(0, 1, 2, 3, 4, 5, 8),
)
DEADLINES = Counter(
    "graspfleet_planner_deadline_reached_total",
    "PlanSteps that returned early because time ran out.",
)


def _check_request(request: servo_planner_pb2.PlanStepRequest, config: PlannerConfig) -> None:
    for name in ("x0", "xt"):
        if not request.HasField(name):
            raise InvalidArgument(f"{name} is missing")
        check_image(name, getattr(request, name), channels=3, max_side=config.max_image_side)
    if (request.x0.width, request.x0.height) != (request.xt.width, request.xt.height):
        raise InvalidArgument("x0 and xt must have the same size")
    if not request.HasField("workspace"):
        raise InvalidArgument("workspace is missing: send the box the gripper must stay in")
    low, high = _vec(request.workspace.min_m), _vec(request.workspace.max_m)
    if not (np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()):
        raise InvalidArgument(
            f"workspace min {low.tolist()} must be below max {high.tolist()} on every axis"
        )
    pose = request.current_pose
    if not np.isfinite([*_vec(pose.position_m), pose.yaw_rad]).all():
        raise InvalidArgument("current_pose has a NaN or infinite value")
    if not 0.0 <= request.epsilon <= 1.0:
        raise InvalidArgument(f"epsilon={request.epsilon}; expected 0..1")
    c = request.cem
    if c.population and not 1 <= (c.elites or 1) <= c.population:
        raise InvalidArgument(
            f"cem.elites={c.elites} must be between 1 and cem.population={c.population}"
        )
    if c.population > 4096 or c.iterations > 20:
        raise InvalidArgument("cem.population is at most 4096 and cem.iterations at most 20")
    close_ratio, raise_ratio = _servoing(request, config)
    if not 0 < raise_ratio <= close_ratio <= 1:
        raise InvalidArgument(
            f"servoing close_ratio={close_ratio:g}, raise_ratio={raise_ratio:g} (0 takes the "
            "planner's setting): need 0 < raise_ratio <= close_ratio <= 1"
        )
    if request.budget_ms > config.max_budget_ms:
        raise InvalidArgument(
            f"budget_ms={request.budget_ms} is over the planner's max_budget_ms="
            f"{config.max_budget_ms}; ask for less, or 0 for the default {config.budget_ms} ms"
        )


def _servoing(
    request: servo_planner_pb2.PlanStepRequest, config: PlannerConfig
) -> tuple[float, float]:
    """The (close_ratio, raise_ratio) a request plans with: its own, or the planner's."""
    asked = request.servoing
    return asked.close_ratio or config.close_ratio, asked.raise_ratio or config.raise_ratio


def _vec(v: common_pb2.Vec3) -> np.ndarray:
    return np.array([v.x, v.y, v.z], dtype=np.float64)


def _motion(v: np.ndarray) -> common_pb2.MotionCommand:
    return common_pb2.MotionCommand(
        dx_cm=float(v[0]),
        dy_cm=float(v[1]),
        dz_cm=float(v[2]),
        sin_dyaw=float(v[3]),
        cos_dyaw=float(v[4]),
    )


class ServoPlannerServicer(servo_planner_pb2_grpc.ServoPlannerServicer):
    """The ServoPlanner service: plans each servoing step with CEM over the grasp predictor."""

    def __init__(self, config: PlannerConfig) -> None:
        self.config = config
        self.channel = upstream.channel(
            config.predictor_address, tls_ca="" if config.predictor_plaintext else None
        )
        self.scoring = GraspScoring(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self) -> None:
        """Closes the channel to the grasp predictor."""
        self.channel.close()

    def check(self) -> str | None:
        """None when a grasp-predictor answers, else why the planner cannot plan.

        Any answer counts, "no such model" included: a model is the predictor's readiness,
        reported per call, and a new fleet's first model arrives after its planner started.
        """
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.config.model_name
        try:
            self.models.GetModelStatus(request, timeout=self.config.health_check_period_s)
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return (
                    f"no grasp-predictor answers at {self.config.predictor_address}: "
                    f"{err.code().name}: {err.details()}"
                )
        return None

    def PlanStep(self, request, context):
        """The next command for an arm: a CEM-planned move, a close, a raise, or a random move."""
        auth.authorize(context, (*auth.ARMS, auth.SIM_FARM), "plan grasps")
        _check_request(request, self.config)
        started = time.monotonic()
        deadline = started + (request.budget_ms or self.config.budget_ms) / 1000.0
        # The features and the first CEM iteration may run past the budget up to the
        # caller's own deadline: a late plan is better than none. Leave a little of
        # that deadline for the answer to travel back.
        grpc_left = context.time_remaining()
        hard_deadline = deadline if grpc_left is None else started + grpc_left * 0.9
        deadline = min(deadline, hard_deadline)
        rng = np.random.default_rng(request.seed or None)
        position = _vec(request.current_pose.position_m)
        workspace = cem.Workspace(_vec(request.workspace.min_m), _vec(request.workspace.max_m))
        params = cem.CemParams(
            population=request.cem.population or self.config.population,
            elites=request.cem.elites or self.config.elites,
            iterations=request.cem.iterations or self.config.iterations,
            max_yaw_rad=self.config.max_yaw_rad,
            grasp_band_m=self.config.grasp_band_m,
        )
        if request.epsilon and rng.random() < request.epsilon:
            target = cem.random_target(rng, workspace, params)
            motion = cem.motions_to(target[None], position)[0]
            DECISIONS.labels("random").inc()
            return servo_planner_pb2.PlanStepResponse(
                command=common_pb2.Command(
                    kind=common_pb2.Command.KIND_MOVE, motion=_motion(motion)
                ),
                random=True,
            )

        model = (
            request.model
            if request.model.name
            else common_pb2.ModelRef(name=self.config.model_name)
        )
        spec = model_pb2.ModelSpec(name=model.name)
        if model.version:
            spec.version.value = model.version
        else:
            spec.version_label = model.label or self.config.default_label
        x0 = decode_image(request.x0, "x0")[None]
        xt = decode_image(request.xt, "xt")[None]
        try:
            score = self.scoring.scorer(spec, x0, xt, hard_deadline - time.monotonic())
            result = cem.optimize(
                score,
                position,
                workspace,
                params,
                rng,
                time_left=lambda: deadline - time.monotonic(),
                first_time_left=lambda: hard_deadline - time.monotonic(),
            )
        except TimeoutError as err:
            raise DeadlineExceeded(str(err)) from None
        self.scoring.served(spec, score)
        served = common_pb2.ModelRef(
            name=model.name, label=spec.version_label, version=score.version
        )
        ITERATIONS.observe(result.iterations)
        if result.deadline_reached:
            DEADLINES.inc()
        near_floor = position[2] <= workspace.low[2] + self.config.close_height_m
        kind, motion, success = self._decide(result, near_floor, *_servoing(request, self.config))
        DECISIONS.labels(common_pb2.Command.Kind.Name(kind).removeprefix("KIND_").lower()).inc()
        return servo_planner_pb2.PlanStepResponse(
            command=common_pb2.Command(kind=kind, motion=_motion(motion)),
            predicted_success=success,
            close_success=result.no_motion_success,
            model=served,
            iterations_done=result.iterations,
            deadline_reached=result.deadline_reached,
        )

    def _decide(
        self, result: cem.CemResult, near_floor: bool, close_ratio: float, raise_ratio: float
    ) -> tuple[int, np.ndarray, float]:
        """Levine et al.'s servoing heuristics on C(no motion) against C(best motion).

        Both apply only near the floor of the workspace: a model that has seen no
        grasp closed high up cannot know such grasps fail, and a gripper high up
        has nothing to lift clear of.
        """
        if near_floor and result.no_motion_success >= close_ratio * result.success:
            return common_pb2.Command.KIND_CLOSE, cem.NO_MOTION, result.no_motion_success
        # Raising keeps a gripper that is down among the objects from sweeping them aside;
        # higher up there is nothing to clear, and raising would undo the descent.
        if near_floor and result.no_motion_success < raise_ratio * result.success:
            return common_pb2.Command.KIND_RAISE, result.motion, result.success
        return common_pb2.Command.KIND_MOVE, result.motion, result.success


def create_server(config: PlannerConfig) -> ServiceServer:
    """Starts the planner; SERVING while a grasp-predictor answers (see `check`)."""
    servicer = ServoPlannerServicer(config)
    server = ServiceServer(
        "servo-planner",
        config,
        lambda grpc_server: servo_planner_pb2_grpc.add_ServoPlannerServicer_to_server(
            servicer, grpc_server
        ),
        [SERVICE_NAME],
        on_stop=servicer.close,
    )
    server.watch_readiness(servicer.check, config.health_check_period_s)
    return server


def main(argv: list[str] | None = None) -> None:
    """`graspfleet planner serve`: plans until SIGTERM."""
    config = load_config(PlannerConfig, "graspfleet planner serve", argv)
    logs.configure_logging("servo-planner", config.log_level, config.log_format)
    stop = stop_signals()  # before the port file: a SIGTERM from then on drains
    create_server(config).wait(stop=stop)
