"""The researcher's commands: `graspfleet train submit|evaluate|ls|get|watch|cancel`, `graspfleet models`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from robots.names import RANDOMIZATIONS

DEFAULT_TRAINER = "127.0.0.1:50056"
EVALUATE_EXAMPLE = (
    "graspfleet train evaluate --arm robots/evaluation/proxy-real-test.yaml "
    "--contender v3=cem:3 --contender canary=cem:canary --contender random --scenes 150 --watch"
)
STATES = ("queued", "running", "validating", "succeeded", "failed", "cancelled", "rejected")


def _stub(args: argparse.Namespace):
    from graspfleet.v1 import trainer_pb2_grpc
    from services.common import upstream

    channel = upstream.channel(args.trainer)
    return channel, trainer_pb2_grpc.TrainerStub(channel)


def _metadata(args: argparse.Namespace) -> list[tuple[str, str]]:
    from services.common import auth

    return [(auth.USER_HEADER, os.environ.get("USER", "cli")), *auth.bearer(args.token)]


def _state(run) -> str:
    from services.trainer.runs import state_name

    return state_name(run.state)


def _recipe(value: int) -> str:
    from graspfleet.v1 import trainer_pb2

    return trainer_pb2.Recipe.Name(value).removeprefix("RECIPE_")


def _spec(args: argparse.Namespace):
    from graspfleet.v1 import common_pb2, trainer_pb2
    from services.trainer import recipes

    try:
        recipe = recipes.lookup(args.recipe)
    except KeyError:
        if args.recipe.strip().upper().removeprefix("RECIPE_") == "EVALUATION":
            raise SystemExit("graspfleet: evaluations: graspfleet train evaluate --help") from None
        raise SystemExit(
            f"graspfleet: unknown recipe {args.recipe!r}: {recipes.short_names()}"
        ) from None
    spec = trainer_pb2.RunSpec(
        model_name=args.model or "",
        recipe=recipe.value,
        backend=args.backend or "",
        description=args.description or "",
        params=trainer_pb2.TrainingParams(
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            profile=args.profile or "",
            seed=args.seed,
        ),
        data=trainer_pb2.DataSelection(
            max_real_episodes=args.max_real_episodes,
            real_fraction=args.real_fraction,
            max_sim_episodes=args.max_sim_episodes,
            object_set=args.object_set or "",
            robot_ids=args.robot or [],
            validation_fraction=args.validation_fraction,
        ),
    )
    for pair in args.weight or []:
        key, _, value = pair.partition("=")
        spec.params.weights[key] = float(value)
    if args.sim_randomization:
        spec.data.sim_randomization = common_pb2.Randomization.Value(
            f"RANDOMIZATION_{args.sim_randomization.upper()}"
        )
    for name in ("since", "until"):
        if getattr(args, name):
            getattr(spec.data, name).FromJsonString(getattr(args, name))
    if args.refiner:
        _model_ref(spec.refiner, args.refiner)
    if args.start_from:
        _model_ref(spec.start_from, args.start_from)
    if args.no_gate:
        spec.gate.enabled = False
    elif args.max_regression is not None:
        spec.gate.CopyFrom(trainer_pb2.GateSpec(enabled=True, max_regression=args.max_regression))
    return spec


def _model_ref(ref, text: str) -> None:
    """A version number, or a label."""
    if text.isdigit():
        ref.version = int(text)
    else:
        ref.label = text


def _evaluation_spec(args: argparse.Namespace):
    from graspfleet.v1 import trainer_pb2

    try:
        arm = Path(args.arm).read_text()
    except OSError as err:
        raise SystemExit(f"graspfleet: --arm {args.arm}: {err.strerror}") from None
    try:
        request = trainer_pb2.EvaluationRequest(
            arm_config_yaml=arm, scenes=args.scenes, seed=args.seed, shards=args.shards
        )
    except ValueError:
        raise SystemExit("graspfleet: --scenes, --seed and --shards must not be negative") from None
    for name, policy, model, rcan in args.contender:
        contender = request.contenders.add(name=name, policy=policy)
        if model:
            _model_ref(contender.model, model)
        if rcan:
            _model_ref(contender.rcan, rcan)
    return trainer_pb2.RunSpec(
        recipe=trainer_pb2.RECIPE_EVALUATION,
        evaluation=request,
        backend=args.backend or "",
        description=args.description or "",
    )


def _evaluate(args: argparse.Namespace) -> int:
    return _send(args, _evaluation_spec(args))


def _submit(args: argparse.Namespace) -> int:
    return _send(args, _spec(args))


def _send(args: argparse.Namespace, spec) -> int:
    from graspfleet.v1 import trainer_pb2

    request = trainer_pb2.SubmitRunRequest(spec=spec, run_id=args.run_id or "")
    channel, stub = _stub(args)
    with channel:
        run = stub.SubmitRun(request, metadata=_metadata(args), timeout=120)
    print(f"{run.run_id} {_state(run)}: {run.message}")
    if args.watch:
        args.run_id = run.run_id
        return _watch(args)
    return 0


def _ls(args: argparse.Namespace) -> int:
    from graspfleet.v1 import trainer_pb2

    state = trainer_pb2.RunState.Value(f"RUN_STATE_{args.state.upper()}") if args.state else 0
    channel, stub = _stub(args)
    with channel:
        page = stub.ListRuns(
            trainer_pb2.ListRunsRequest(state=state, page_size=args.limit), timeout=30
        )
    print(f"{'run':<18} {'state':<10} {'recipe':<20} {'steps':>13} {'model':<22} submitted")
    for run in page.runs:
        published = f"{run.published.name}:{run.published.version}" if run.published.name else "-"
        created = run.created_at.ToDatetime().isoformat(timespec="seconds")
        steps = f"{run.step}/{run.total_steps}"
        print(
            f"{run.run_id:<18} {_state(run):<10} {_recipe(run.spec.recipe):<20} {steps:>13} "
            f"{published:<22} {created} by {run.submitted_by or '-'}"
        )
    return 0


def _get(args: argparse.Namespace) -> int:
    from graspfleet.v1 import trainer_pb2

    channel, stub = _stub(args)
    with channel:
        run = stub.GetRun(trainer_pb2.GetRunRequest(run_id=args.run_id), timeout=30)
    unit = "episodes" if run.spec.recipe == trainer_pb2.RECIPE_EVALUATION else "steps"
    print(f"{run.run_id} {_state(run)} {_recipe(run.spec.recipe)}")
    print(f"  {unit}: {run.step}/{run.total_steps}")
    if run.published.name:
        print(f"  published: {run.published.name}:{run.published.version}")
    if run.message:
        print(f"  {run.message}")
    for key in sorted(run.metrics):
        print(f"  {key:<40} {run.metrics[key]:.4g}")
    return 0 if run.state == trainer_pb2.RUN_STATE_SUCCEEDED else 1


def _watch(args: argparse.Namespace) -> int:
    from graspfleet.v1 import trainer_pb2

    channel, stub = _stub(args)
    run = None
    with channel:
        for event in stub.WatchRun(trainer_pb2.WatchRunRequest(run_id=args.run_id)):
            run = event.run
            when = event.time.ToDatetime().strftime("%H:%M:%S")
            print(f"{when} {_state(run):<10} {event.log_line}", flush=True)
    if run is not None and run.message:
        print(run.message)
    return 0 if run is not None and run.state == trainer_pb2.RUN_STATE_SUCCEEDED else 1


def _cancel(args: argparse.Namespace) -> int:
    from graspfleet.v1 import trainer_pb2

    channel, stub = _stub(args)
    with channel:
        run = stub.CancelRun(
            trainer_pb2.CancelRunRequest(run_id=args.run_id), metadata=_metadata(args), timeout=30
        )
    print(f"{run.run_id} {_state(run)}")
    return 0


def _job(args: argparse.Namespace) -> int:
    # The job side loads TensorFlow; the researcher's other commands never need it.
    from services.trainer.job import main as job

    return job.main(["--run-dir", args.run_dir])


def _print_version(v) -> None:
    # A generator's accuracy is its masks' on held-out sim images (the scene gate's number).
    accuracy = v.metrics.get("validation_accuracy", v.metrics.get("validation_mask_accuracy"))
    shown = f"{accuracy:.3f}" if accuracy is not None else "-"
    created = "-"
    if v.HasField("created_at"):
        created = v.created_at.ToDatetime().isoformat(timespec="seconds")
    labels = ",".join(v.labels) or "-"
    print(
        f"{v.version:>7} {labels:<16} {_recipe(v.recipe):<20} {v.run_id or '-':<18} "
        f"{shown:>8} {created}"
    )


def _models_ls(args: argparse.Namespace) -> int:
    from graspfleet.v1 import trainer_pb2

    channel, stub = _stub(args)
    with channel:
        response = stub.ListModelVersions(
            trainer_pb2.ListModelVersionsRequest(name=args.model or ""), timeout=30
        )
    print(f"{'version':>7} {'labels':<16} {'recipe':<20} {'run':<18} {'accuracy':>8} created")
    for version in response.versions:
        _print_version(version)
    return 0


def _models_history(args: argparse.Namespace) -> int:
    from graspfleet.v1 import trainer_pb2

    request = trainer_pb2.ListLabelChangesRequest(name=args.model or "", label=args.label or "")
    channel, stub = _stub(args)
    with channel:
        response = stub.ListLabelChanges(request, timeout=30)
    print(f"{'time (UTC)':<19} {'label':<8} {'version':>7} {'from':>4} {'by':<12} reason")
    for change in response.changes:
        when = change.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if change.time.seconds else ""
        previous = str(change.previous or "-")
        version = change.version or "-"
        print(
            f"{when:<19} {change.label:<8} {version:>7} {previous:>4} {change.by:<12} "
            f"{change.action}: {change.reason}"
        )
    return 0


def _promote(args: argparse.Namespace) -> int:
    from graspfleet.v1 import trainer_pb2

    request = trainer_pb2.SetVersionLabelRequest(
        name=args.model or "", version=args.version, label=args.label
    )
    channel, stub = _stub(args)
    with channel:
        version = stub.SetVersionLabel(request, metadata=_metadata(args), timeout=30)
    print(f"{version.name}:{version.version} is now {args.label}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from graspfleet.v1 import trainer_pb2

    request = trainer_pb2.RollbackVersionLabelRequest(name=args.model or "", label=args.label)
    channel, stub = _stub(args)
    with channel:
        version = stub.RollbackVersionLabel(request, metadata=_metadata(args), timeout=30)
    print(f"{args.label} of {version.name} is back on version {version.version}")
    return 0


def _connection(sub: argparse.ArgumentParser, mutating: bool) -> None:
    default = os.environ.get("GRASPFLEET_TRAINER", DEFAULT_TRAINER)
    sub.add_argument("--trainer", default=default, help=f"trainer host:port (default {default})")
    if mutating:
        from services.common.auth import add_token_flag

        add_token_flag(sub)


def _submit_flags(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--recipe", required=True, help="REAL_ONLY, NAIVE_MIX, DANN, DANN_R, ...")
    sub.add_argument("--model", help="model name (default: the trainer's)")
    sub.add_argument("--backend", choices=["local", "kubernetes"])
    sub.add_argument("--run-id", help="client-chosen id; resubmitting it returns the same run")
    sub.add_argument("--description")
    sub.add_argument("--steps", type=int, default=0)
    sub.add_argument("--batch-size", type=int, default=0)
    sub.add_argument("--learning-rate", type=float, default=0.0)
    sub.add_argument("--profile", help="default or paper; the generator recipes also take tiny")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument(
        "--weight", action="append", help="loss weight key=value, e.g. dann=0.1, lambda_g=1"
    )
    amount = sub.add_mutually_exclusive_group()
    amount.add_argument("--max-real-episodes", type=int, default=0)
    amount.add_argument("--real-fraction", type=float, default=0.0)
    sub.add_argument("--max-sim-episodes", type=int, default=0)
    sub.add_argument("--sim-randomization", choices=RANDOMIZATIONS)
    sub.add_argument("--object-set", help="object set of the simulated episodes")
    sub.add_argument("--robot", action="append", help="real robot id (repeatable)")
    sub.add_argument("--since", help="episodes started at or after (RFC 3339)")
    sub.add_argument("--until", help="episodes started before (RFC 3339)")
    sub.add_argument("--validation-fraction", type=float, default=0.0)
    sub.add_argument(
        "--refiner",
        help="generator version or label a refining recipe applies (default: its stable)",
    )
    sub.add_argument(
        "--start-from",
        help="version or label of the model to fine-tune (default: random weights)",
    )
    gate = sub.add_mutually_exclusive_group()
    gate.add_argument("--max-regression", type=float, help="gate: largest accuracy drop allowed")
    gate.add_argument("--no-gate", action="store_true", help="publish without the gate")
    sub.add_argument("--watch", action="store_true", help="stream the run until it ends")


def _evaluate_flags(sub: argparse.ArgumentParser) -> None:
    from services.evaluation.contenders import split_contender

    sub.add_argument("--arm", required=True, help="arm configuration file (YAML), sent as text")
    sub.add_argument(
        "--contender",
        action="append",
        type=split_contender,
        required=True,
        help="random | oracle | NAME=cem:VERSION[:rcan:RCAN_VERSION] (repeatable); a label "
        "(stable, canary) may stand for a version",
    )
    sub.add_argument("--scenes", type=int, default=150, help="scenes per contender")
    sub.add_argument("--seed", type=int, default=7, help="scene seed")
    sub.add_argument("--shards", type=int, default=0, help="shards per contender (default 2)")
    sub.add_argument("--backend", choices=["local", "kubernetes"])
    sub.add_argument("--run-id", help="client-chosen id; resubmitting it returns the same run")
    sub.add_argument("--description")
    sub.add_argument("--watch", action="store_true", help="stream the run until it ends")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Adds the `train` and `models` command groups to the graspfleet parser."""
    train = commands.add_parser("train", help="submit and follow training runs")
    runs = train.add_subparsers(dest="train_command", required=True)
    submit = runs.add_parser("submit", help="submit a training run")
    _submit_flags(submit)
    submit.set_defaults(handler=_submit)
    evaluate = runs.add_parser(
        "evaluate",
        help="score model versions in closed loop on the sim-farm (a run of recipe EVALUATION)",
        description=f"Example: {EVALUATE_EXAMPLE}",
    )
    _evaluate_flags(evaluate)
    evaluate.set_defaults(handler=_evaluate)
    ls = runs.add_parser("ls", help="list runs, newest first")
    ls.add_argument("--state", choices=STATES)
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(handler=_ls)
    get = runs.add_parser("get", help="a run's state, message and metrics")
    get.add_argument("run_id")
    get.set_defaults(handler=_get)
    watch = runs.add_parser("watch", help="stream a run's progress until it ends")
    watch.add_argument("run_id")
    watch.set_defaults(handler=_watch)
    cancel = runs.add_parser("cancel", help="cancel a queued or running run")
    cancel.add_argument("run_id")
    cancel.set_defaults(handler=_cancel)
    for sub, mutating in (
        (submit, True),
        (evaluate, True),
        (ls, False),
        (get, False),
        (watch, False),
        (cancel, True),
    ):
        _connection(sub, mutating)
    job = runs.add_parser("job", help="(internal) the training job a backend runs")
    job.add_argument("--run-dir", required=True)
    job.set_defaults(handler=_job)

    models = commands.add_parser("models", help="published model versions and their labels")
    versions = models.add_subparsers(dest="models_command", required=True)
    mls = versions.add_parser("ls", help="list a model's versions and labels")
    mls.set_defaults(handler=_models_ls)
    promote = versions.add_parser("promote", help="put a label (stable by default) on a version")
    promote.add_argument("version", type=int)
    promote.add_argument("--label", default="stable")
    promote.set_defaults(handler=_promote)
    rollback = versions.add_parser("rollback", help="move a label back to its previous version")
    rollback.add_argument("--label", default="stable")
    rollback.set_defaults(handler=_rollback)
    history = versions.add_parser(
        "history", help="every label change, with the numbers of the rollout's decisions"
    )
    history.add_argument("--label", help="only this label's changes")
    history.set_defaults(handler=_models_history)
    for sub, mutating in ((mls, False), (history, False), (promote, True), (rollback, True)):
        sub.add_argument("--model", help="model name (default: the trainer's)")
        _connection(sub, mutating)
