"""Fine-tuning: a run that names `start_from` trains from that version's weights, and only from
a version of the same network."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from graspfleet.v1 import common_pb2
from graspfleet.v1 import trainer_pb2 as S
from models.grasp_success import export
from models.grasp_success.model import ModelConfig, build_model
from models.registry import TRAINING_WEIGHTS_FILE, Registry
from tests.trainer.conftest import AUTH, tiny_spec, trainer_stub, watch

pytestmark = pytest.mark.timeout(300)


def _publish(stub, spec: S.RunSpec) -> S.Run:
    spec.gate.CopyFrom(S.GateSpec(enabled=False))
    run = stub.SubmitRun(S.SubmitRunRequest(spec=spec), metadata=AUTH)
    final = watch(stub, run.run_id)[-1].run
    assert final.state == S.RUN_STATE_SUCCEEDED, final.message
    return final


def _trainable(models_dir, version: int, config: ModelConfig) -> list[np.ndarray]:
    model = build_model(config)
    model.load_weights(str(export.training_weights(models_dir / "grasp_success" / str(version))))
    return [w.numpy() for w in model.trainable_weights]


def _largest_change(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def test_a_fine_tuning_run_starts_from_the_version_it_names(start_trainer, tmp_path):
    server = start_trainer()
    channel, stub = trainer_stub(server)
    with channel:
        first = _publish(stub, tiny_spec(S.RECIPE_SIM_ONLY))
        assert first.published.version == 1
        # Learning rate 1e-9: Adam moves each weight by at most about 1e-9 a step, so a run
        # that started from version 1 ends within 1e-6 of it, and one from random weights does not.
        tuned, fresh = (tiny_spec(S.RECIPE_REAL_ONLY) for _ in range(2))
        for spec in (tuned, fresh):
            spec.params.learning_rate = 1e-9
        tuned.start_from.label = "canary"
        tuned_run = _publish(stub, tuned)
        fresh_run = _publish(stub, fresh)
    # The stored run shows the version the label named when it was submitted.
    assert tuned_run.spec.start_from == common_pb2.ModelRef(
        name="grasp_success", version=1, label="canary"
    )
    models = tmp_path / "models"
    config = ModelConfig()
    v1 = _trainable(models, 1, config)
    assert _largest_change(v1, _trainable(models, tuned_run.published.version, config)) < 1e-6
    assert _largest_change(v1, _trainable(models, fresh_run.published.version, config)) > 1e-3


def test_start_from_is_refused_with_the_reason_when_it_cannot_load(start_trainer, tmp_path):
    server = start_trainer()
    channel, stub = trainer_stub(server)
    with channel:
        _publish(stub, tiny_spec(S.RECIPE_SIM_ONLY))

        def refused(edit) -> grpc.RpcError:
            spec = tiny_spec(S.RECIPE_REAL_ONLY)
            edit(spec)
            with pytest.raises(grpc.RpcError) as err:
                stub.SubmitRun(S.SubmitRunRequest(spec=spec), metadata=AUTH)
            return err.value

        missing = refused(lambda s: setattr(s.start_from, "label", "champion"))
        assert missing.code() == grpc.StatusCode.NOT_FOUND and "champion" in missing.details()
        other = refused(lambda s: setattr(s.start_from, "name", "other_model"))
        assert other.code() == grpc.StatusCode.INVALID_ARGUMENT

        def dbn(spec):
            spec.recipe = S.RECIPE_DBN_MIX
            spec.start_from.version = 1

        network = refused(dbn)
        assert network.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "dbn False (the run: True)" in network.details()

        def generator(spec):
            spec.recipe = S.RECIPE_RCAN_GENERATOR
            spec.start_from.version = 1

        assert refused(generator).code() == grpc.StatusCode.INVALID_ARGUMENT

        # A version published before versions carried their training weights.
        (tmp_path / "models" / "grasp_success" / "1" / TRAINING_WEIGHTS_FILE).unlink()
        old = refused(lambda s: setattr(s.start_from, "version", 1))
        assert old.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "published before versions carried" in old.details()
        assert Registry(tmp_path / "models").version_numbers("grasp_success") == [1]
