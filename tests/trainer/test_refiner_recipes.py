"""The refiner recipes end to end: generators trained, gated and published through the trainer API,
then grasp models trained on refined and canonical images; bulk refinement; GPU Job tolerations.
"""

from __future__ import annotations

import json

import grpc
import kubernetes_validate
import numpy as np
import pytest
from kubernetes import client as k8s

from graspfleet.v1 import common_pb2, episode_store_pb2, trainer_pb2
from models.episodes.dataset import X0, XT, step_dataset
from models.generators import export
from models.registry import METADATA_FILE
from services.common.config import ConfigError
from services.common.images import decode_image
from services.episode_store import client
from services.trainer.backends import JobSpec
from services.trainer.config import TrainerConfig
from services.trainer.job import gate, refine_dataset
from services.trainer.job.files import WORK_DIR
from services.trainer.kubernetes_backend import KubernetesBackend
from services.trainer.spec import GRASPGAN_LOSS_WEIGHTS, RCAN_WEIGHTS
from tests.fixtures import refiner_models
from tests.trainer.conftest import AUTH, tiny_spec, trainer_stub, watch

S = trainer_pb2
# Tiny runs cannot learn the masks; the scene gate's thresholds have their own tests below.
NO_SCENE_GATE = {"generator_min_mask_accuracy": 0.0, "generator_min_mask_iou": 0.0}


@pytest.fixture(scope="module")
def store(refiner_store):
    """Every trainer of this module reads the refiner recipes' store."""
    return refiner_store


def generator_spec(recipe: int) -> S.RunSpec:
    """Three steps of the tiny generator profile: the whole path, not a useful generator."""
    return S.RunSpec(
        recipe=recipe,
        params=S.TrainingParams(steps=3, batch_size=4, profile="tiny", seed=1),
        data=S.DataSelection(validation_fraction=0.25),
    )


def grasp_spec(recipe: int) -> S.RunSpec:
    """A few grasp-model steps: the refiner recipes differ from the others before training."""
    spec = tiny_spec(recipe)
    spec.params.steps = 8
    return spec


def submit(stub, spec: S.RunSpec) -> S.Run:
    return stub.SubmitRun(S.SubmitRunRequest(spec=spec), metadata=AUTH)


def finished(stub, spec: S.RunSpec) -> S.Run:
    """Submits `spec` and follows it to its end; returns the run as it ended."""
    return watch(stub, submit(stub, spec).run_id)[-1].run


def refused(stub, spec: S.RunSpec) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        submit(stub, spec)
    return error.value


def promote(stub, name: str, version: int) -> None:
    request = S.SetVersionLabelRequest(name=name, version=version, label="stable")
    stub.SetVersionLabel(request, metadata=AUTH)


def metadata(models, name: str, version: int) -> dict:
    return json.loads((models / name / str(version) / METADATA_FILE).read_text())


def test_refiner_recipes_are_refused_until_their_generator_is_stable(start_trainer):
    channel, stub = trainer_stub(start_trainer())
    with channel:
        for recipe, first in (
            (S.RECIPE_GRASPGAN_SIM_ONLY, "run recipe GRASPGAN_GENERATOR first"),
            (S.RECIPE_GRASPGAN_DANN_DBN, "run recipe GRASPGAN_GENERATOR first"),
            (S.RECIPE_RCAN, "run recipe RCAN_GENERATOR first"),
        ):
            error = refused(stub, tiny_spec(recipe))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert first in error.details() and "refiner's" in error.details()
        bad = {
            "a generator under the grasp model's name": (
                lambda s: setattr(s, "model_name", "grasp_success"),
                "publishes the graspgan generator as 'graspgan'",
            ),
            "an accuracy gate on a generator": (
                lambda s: setattr(s.gate, "max_regression", 0.1),
                "gated on scene preservation",
            ),
            "a weight GraspGAN does not have": (
                lambda s: s.params.weights.update(image_weight=3.0),
                "is not a weight of GRASPGAN_GENERATOR",
            ),
            "half the real labels": (
                lambda s: s.params.weights.update(real_task=0.5),
                "'real_task'] is 1",
            ),
            "a negative loss weight": (
                lambda s: s.params.weights.update(lambda_g=-1.0),
                "must be in [0, 1000.0]",
            ),
            "a refiner profile for the grasp model": (
                lambda s: (setattr(s, "recipe", S.RECIPE_DANN), s.params.weights.clear()),
                "params.profile 'tiny' is unknown for DANN",
            ),
        }
        for case, (edit, reason) in bad.items():
            spec = generator_spec(S.RECIPE_GRASPGAN_GENERATOR)
            edit(spec)
            error = refused(stub, spec)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, case
            assert reason in error.details(), (case, error.details())
        spec = generator_spec(S.RECIPE_RCAN_GENERATOR)
        spec.data.robot_ids.append("kuka-01")
        assert "uses none" in refused(stub, spec).details()
        spec = tiny_spec(S.RECIPE_DANN)
        spec.refiner.version = 1
        error = refused(stub, spec)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "applies no generator; leave refiner unset" in error.details()


def test_graspgan_generator_then_grasp_models_on_refined_sim(start_trainer, tmp_path):
    channel, stub = trainer_stub(start_trainer(max_concurrent_runs=2, **NO_SCENE_GATE))
    models = tmp_path / "models"
    with channel:
        run = finished(stub, generator_spec(S.RECIPE_GRASPGAN_GENERATOR))
        assert run.state == S.RUN_STATE_SUCCEEDED, run.message
        assert run.spec.model_name == "graspgan" and run.spec.params.learning_rate == 2e-4
        assert run.published == common_pb2.ModelRef(name="graspgan", version=1, label="canary")
        assert "held-out sim mask accuracy" in run.message and "arm IoU" in run.message
        described = metadata(models, "graspgan", 1)
        assert described["kind"] == export.KIND_GRASPGAN
        assert described["trainer"]["recipe"] == "RECIPE_GRASPGAN_GENERATOR"
        assert described["recipe"]["profile"] == "tiny" and described["recipe"]["real_labels"]
        # Scene preservation is measured on held-out simulated episodes G never trained on.
        assert described["data"]["validation"]["sim_episodes"] == 2
        assert described["data"]["train"]["sim_episodes"] == 6
        assert 0 <= described["validation_metrics"]["mask_accuracy"] <= 1
        (listed,) = stub.ListModelVersions(S.ListModelVersionsRequest(name="graspgan")).versions
        assert listed.recipe == S.RECIPE_GRASPGAN_GENERATOR and listed.labels == ["canary"]
        assert "validation_mask_iou_object" in listed.metrics

        # A canary generator is not applied: refining needs the one promoted to stable.
        error = refused(stub, grasp_spec(S.RECIPE_GRASPGAN_SIM_ONLY))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "promote one (graspfleet models promote 1 --model graspgan)" in error.details()
        # ... unless the run names a version or label itself, resolved when it is accepted.
        chosen = grasp_spec(S.RECIPE_GRASPGAN_SIM_ONLY)
        chosen.refiner.label = "canary"
        run = submit(stub, chosen)
        assert "applying graspgan:1" in run.message
        assert run.spec.refiner == common_pb2.ModelRef(name="graspgan", version=1, label="canary")
        stub.CancelRun(S.CancelRunRequest(run_id=run.run_id), metadata=AUTH)
        for edit, code, reason in (
            (lambda r: setattr(r, "version", 7), "NOT_FOUND", "has no version 7; published: [1]"),
            (
                lambda r: setattr(r, "label", "beta"),
                "NOT_FOUND",
                "labelled 'beta'; labels: ['canary']",
            ),
            (lambda r: setattr(r, "name", "other"), "INVALID_ARGUMENT", "leave the name empty"),
        ):
            wrong = grasp_spec(S.RECIPE_GRASPGAN_SIM_ONLY)
            edit(wrong.refiner)
            error = refused(stub, wrong)
            assert error.code().name == code and reason in error.details(), error.details()
        promote(stub, "graspgan", 1)

        table_2 = submit(stub, grasp_spec(S.RECIPE_GRASPGAN_SIM_ONLY))
        table_3 = submit(stub, grasp_spec(S.RECIPE_GRASPGAN_DANN_DBN))
        assert "applying graspgan:1" in table_2.message
        ended = {r.run_id: watch(stub, r.run_id)[-1].run for r in (table_2, table_3)}
    versions = set()
    for run_id, run in ended.items():
        assert run.state == S.RUN_STATE_SUCCEEDED, run.message
        assert run.published.name == "grasp_success"
        versions.add(run.published.version)
        described = metadata(models, "grasp_success", run.published.version)
        refiner = described["refiner"]
        assert (refiner["name"], refiner["version"], refiner["label"]) == ("graspgan", 1, "stable")
        assert refiner["applied_to"] == "simulated training episodes"
        # Every selected simulated episode was refined, x0 and each of its 4 steps.
        sim = sum(
            c["episodes"] for b, c in described["data"]["train"].items() if b.startswith("sim/")
        )
        assert refiner["episodes"] == sim == 8 and refiner["images"] == 8 * 5
        assert not (tmp_path / "trainer" / "runs" / run_id / WORK_DIR).exists()
    assert versions == {1, 2}
    recipes = {metadata(models, "grasp_success", v)["trainer"]["recipe"] for v in versions}
    assert recipes == {"RECIPE_GRASPGAN_SIM_ONLY", "RECIPE_GRASPGAN_DANN_DBN"}


def test_rcan_generator_then_a_grasp_model_on_canonical_images(start_trainer, tmp_path):
    channel, stub = trainer_stub(start_trainer(**NO_SCENE_GATE))
    models = tmp_path / "models"
    with channel:
        run = finished(stub, generator_spec(S.RECIPE_RCAN_GENERATOR))
        assert run.state == S.RUN_STATE_SUCCEEDED, run.message
        assert run.published == common_pb2.ModelRef(name="rcan", version=1, label="canary")
        described = metadata(models, "rcan", 1)
        assert described["kind"] == export.KIND_RCAN
        skipped = described["data"]["selection"]["without_canonical_renders"]
        assert skipped["train"] + skipped["validation"] == 1  # the episode collected without
        promote(stub, "rcan", 1)

        run = finished(stub, grasp_spec(S.RECIPE_RCAN))
    assert run.state == S.RUN_STATE_SUCCEEDED, run.message
    assert run.published.name == "grasp_success_rcan" and run.published.version == 1
    described = metadata(models, "grasp_success_rcan", 1)
    assert described["refiner"]["name"] == "rcan" and described["refiner"]["version"] == 1
    assert described["refiner"]["applied_to"] == "held-out real episodes"
    assert (
        described["refiner"]["episodes"]
        == described["data"]["validation"]["real/failure"]["episodes"]
        + described["data"]["validation"]["real/success"]["episodes"]
    )
    training = described["training_images"]
    assert training["source"] == "canonical renders"
    assert training["episodes"] + training["skipped_episodes"] == 9
    assert not (models / "grasp_success").exists()


def test_a_generator_that_has_not_learnt_the_scene_is_rejected(start_trainer, tmp_path):
    channel, stub = trainer_stub(start_trainer())  # the default scene gate: 0.9 and 0.3
    with channel:
        run = finished(stub, generator_spec(S.RECIPE_RCAN_GENERATOR))
    # Three steps from random weights cannot put 90% of the pixels in the right class.
    assert run.state == S.RUN_STATE_REJECTED, run.message
    assert "does not keep the scene; not published" in run.message
    assert run.metrics["gate_min_mask_accuracy"] == 0.9
    assert run.metrics["validation_mask_accuracy"] < 0.9
    assert not list((tmp_path / "models" / "rcan").glob("[0-9]*"))


def test_the_weights_the_trainer_accepts_are_the_generators_own():
    from dataclasses import fields

    from models.generators.graspgan import GraspGANConfig
    from models.generators.rcan import RCANSpec

    assert set(GRASPGAN_LOSS_WEIGHTS) == {f.name for f in fields(GraspGANConfig)}
    assert set(RCAN_WEIGHTS) <= {f.name for f in fields(RCANSpec)}


def test_the_scene_gate_checks_accuracy_and_the_arm_and_object_iou():
    good = {"mask_accuracy": 0.95, "mask_iou_arm": 0.7, "mask_iou_object": 0.6}
    limits = {"min_mask_accuracy": 0.9, "min_mask_iou": 0.5}
    assert gate.decide_scene(good, enabled=True, **limits).passed
    for spoiled in ({"mask_accuracy": 0.85}, {"mask_iou_object": 0.3}, {"mask_iou_arm": 0.1}):
        decision = gate.decide_scene({**good, **spoiled}, enabled=True, **limits)
        assert not decision.passed and "does not keep the scene" in decision.message
        assert gate.decide_scene({**good, **spoiled}, enabled=False, **limits).passed
    assert not gate.decide_scene({}, enabled=True, **limits).passed


def _store_episodes(store, **flt) -> list:
    channel, stub = client.connect(store.address)
    with channel:
        return list(client.list_all(stub, episode_store_pb2.EpisodeFilter(**flt)))


def test_bulk_refinement_rewrites_every_image_and_nothing_else(refiner_store, tmp_path):
    data_root = refiner_store.config.data_dir
    sim = _store_episodes(refiner_store, domain=common_pb2.DOMAIN_SIM)[:3]
    real = _store_episodes(refiner_store, domain=common_pb2.DOMAIN_REAL)[:2]
    folder = refiner_models.publish(tmp_path / "models", export.KIND_GRASPGAN, shift=0.8)
    ref = {"kind": export.KIND_GRASPGAN, "name": "graspgan", "version": int(folder.name)}
    generate = refine_dataset.load_generator(tmp_path / "models", ref)
    # A pixel budget of 7 images: two generator calls, each on whole episodes.
    refined = refine_dataset.refine_episodes(
        generate, data_root, sim, tmp_path / "work", batch_pixels=64 * 64 * 7
    )
    assert [e.episode_id for e in refined.episodes] == [e.episode_id for e in sim]
    assert refined.images == 3 * 5 and not refined.skipped
    for before, after in zip(sim, refined.episodes, strict=True):
        assert after.shard.startswith(str((tmp_path / "work").resolve()))
        old = refine_dataset.read_record(data_root, before)
        new = refine_dataset.read_record(data_root, after)
        pairs = [(old.header.x0, new.header.x0)]
        pairs += [(a.image, b.image) for a, b in zip(old.steps, new.steps, strict=True)]
        for source, result in pairs:
            expected = refiner_models.expected(decode_image(source), shift=0.8)
            difference = np.abs(decode_image(result).astype(int) - expected.astype(int))
            assert difference.max() <= 1
        assert new.header.x0_mask == old.header.x0_mask and new.outcome == old.outcome
        for a, b in zip(old.steps, new.steps, strict=True):
            assert (a.mask, a.pose, a.command) == (b.mask, b.pose, b.command)
    # Refined shards (absolute paths) and store shards (relative) read through one data root.
    samples = list(step_dataset(data_root, real + refined.episodes).as_numpy_iterator())
    assert len(samples) == 5 * 4
    last = refine_dataset.read_record(data_root, refined.episodes[-1])
    assert np.array_equal(samples[-1][X0], decode_image(last.header.x0))
    assert np.array_equal(samples[-1][XT], decode_image(last.steps[-1].image))

    canonical = refine_dataset.canonical_episodes(
        data_root,
        _store_episodes(refiner_store, randomization=common_pb2.RANDOMIZATION_VISUAL),
        tmp_path / "canonical",
    )
    assert len(canonical.episodes) == 8 and canonical.skipped == ("sample-316",)
    record = refine_dataset.read_record(data_root, canonical.episodes[0])
    assert record.header.x0 == record.header.x0_canonical
    assert all(step.image == step.canonical for step in record.steps)


@pytest.mark.parametrize("version", ["1.29", "1.33", kubernetes_validate.latest_version()])
def test_gpu_jobs_tolerate_the_tainted_gpu_nodes(version):
    config = TrainerConfig(
        store_address="episode-store:50051",
        store_data_dir="/var/lib/graspfleet/store",
        k8s_gpus=1,
        k8s_tolerations=("nvidia.com/gpu:NoSchedule", "dedicated=training:NoExecute", "spot"),
    )
    job = JobSpec(name="graspfleet-train-run-1", args=("train", "job", "--run-dir", "/runs/1"))
    manifest = KubernetesBackend(config, k8s.ApiClient()).manifest_dict(job)
    kubernetes_validate.validate(manifest, version, strict=True)
    assert manifest["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoExecute"},
        {"key": "spot", "operator": "Exists"},
    ]
    plain = TrainerConfig(store_address="store:1", store_data_dir="/store")
    assert (
        "tolerations"
        not in KubernetesBackend(plain, k8s.ApiClient()).manifest_dict(job)["spec"]["template"][
            "spec"
        ]
    )
    for bad in ("nvidia.com/gpu:NoScheduled", ":NoSchedule", "two words:NoExecute"):
        with pytest.raises(ConfigError, match="k8s_tolerations"):
            TrainerConfig(store_address="store:1", store_data_dir="/store", k8s_tolerations=(bad,))
