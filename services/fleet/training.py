"""The runs `make run` asks the trainer for: version 1's, the automatic runs' template.

Every model of the fleet, the first one included, comes from a trainer run: its
data selection, the gate's decision on held-out real episodes, and the
registry's record of who labelled which version, when and why.
"""

from __future__ import annotations

from tqdm import tqdm

from graspfleet.v1 import common_pb2, trainer_pb2
from models.registry import STABLE
from services.common.auth import USER_HEADER, bearer
from services.fleet import flywheel
from services.fleet.plan import Plan
from services.fleet.process import ServiceProcess
from services.trainer import client as trainer_client


def trainer_run(
    trainer: ServiceProcess, token: str, spec: trainer_pb2.RunSpec, what: str
) -> trainer_pb2.Run:
    """A run through the trainer's API, watched to its end; a published version is made stable.

    Every model of the fleet, the first one included, goes this way: a run with
    its data selection, the gate's decision on held-out real episodes, and the
    registry's record of who labelled which version, when and why.
    """
    auth = [*bearer(token), (USER_HEADER, "make-run")]
    channel, stub = trainer_client.connect(trainer.address)
    with channel:
        run = stub.SubmitRun(trainer_pb2.SubmitRunRequest(spec=spec), metadata=auth, timeout=120)
        steps = spec.params.steps
        with tqdm(total=steps, desc=f"trainer run {run.run_id} ({what})", unit="step") as bar:
            for event in stub.WatchRun(
                trainer_pb2.WatchRunRequest(run_id=run.run_id), timeout=3600
            ):
                run = event.run
                bar.update(max(0, min(run.step, steps) - bar.n))
                bar.set_postfix(state=flywheel.run_state(run))
        print(f"  run {run.run_id} ended {flywheel.run_state(run)}: {run.message}")
        if run.state == trainer_pb2.RUN_STATE_SUCCEEDED and run.published.version:
            stub.SetVersionLabel(
                trainer_pb2.SetVersionLabelRequest(
                    name=run.published.name,
                    version=run.published.version,
                    label=STABLE,
                ),
                metadata=auth,
                timeout=30,
            )
            print(f"  version {run.published.version} published as canary and promoted to stable")
        return run


def automatic_run_spec(plan: Plan) -> trainer_pb2.RunSpec:
    """What the automatic runs start from (the trainer's auto_retrain_spec_file).

    Version 1's data selection and gate, the plan's steps, and the version they
    fine-tune, if the plan names one. The trainer leaves the simulated selection
    out for a recipe without it.
    """
    spec = grasp_run_spec(0, plan.retrain_steps, "make run: automatic retraining")
    if plan.retrain_start_from:
        spec.start_from.version = plan.retrain_start_from
    return spec


def grasp_run_spec(recipe: int, steps: int, description: str = "") -> trainer_pb2.RunSpec:
    """A grasp-model run on the simulated episodes of the train objects and the arms' episodes.

    The scene loss is on: the simulated episodes carry masks (docs/results.md).
    The gate compares with stable on held-out real episodes whose objects no
    training episode holds; the first version passes it with its numbers
    recorded, since there is no stable version yet. The automatic runs start
    from this spec too (the trainer's auto_retrain_spec_file).
    """
    return trainer_pb2.RunSpec(
        recipe=recipe,
        params=trainer_pb2.TrainingParams(steps=steps, batch_size=32, weights={"scene": 1.0}),
        data=trainer_pb2.DataSelection(
            object_set="train", sim_randomization=common_pb2.RANDOMIZATION_NONE
        ),
        gate=trainer_pb2.GateSpec(enabled=True, max_regression=0.05),
        description=description,
    )
