"""The run's job: `graspfleet train job --run-dir DIR`, a local process or a Kubernetes pod.

It reads the run folder the trainer prepared (`files.read_inputs`) and runs
what the recipe asks for: a grasp-success model (`grasp`), one of the
refiner's generators (`generator`) or a closed-loop evaluation
(`evaluation`). Whatever happens, it ends by writing the run's result file,
which is how the trainer learns the verdict; a training job talks to nobody.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from services.common import logs
from services.trainer import recipes
from services.trainer.job import evaluation, files, generator, grasp
from services.trainer.job.files import Result

log = logs.get_logger(__name__)


def run(run_dir: Path) -> int:
    """Runs the job of `run_dir`; the exit code is 0 when it reached a verdict."""
    if not (run_dir / files.JOB_FILE).is_file():
        print(f"graspfleet train job: {run_dir / files.JOB_FILE} is missing", file=sys.stderr)
        return 2
    try:
        inputs = files.read_inputs(run_dir)
        if inputs.is_evaluation:
            result = evaluation.evaluate(run_dir, inputs)
        else:
            recipe = recipes.lookup(inputs.spec.recipe)
            if recipe.is_generator:
                result = generator.train_and_gate(run_dir, inputs, recipe)
            else:
                result = grasp.train_and_gate(run_dir, inputs, recipe)
    except files.Cancelled as cancelled:
        result = Result("CANCELLED", str(cancelled))
    except Exception as err:  # noqa: BLE001 - every failure must reach the trainer as a result
        log.exception("job failed")
        result = Result("FAILED", f"{type(err).__name__}: {err}")
    finally:
        # Rewritten shards can be as large as the data; the model's metadata says what they were.
        shutil.rmtree(run_dir / files.WORK_DIR, ignore_errors=True)
    files.write_result(run_dir, result)
    log.info("job finished", extra={"state": result.state, "result": result.message})
    return 0 if result.state != "FAILED" else 1


def main(argv: list[str] | None = None) -> int:
    """`graspfleet train job --run-dir DIR`."""
    parser = argparse.ArgumentParser(prog="graspfleet train job", description=__doc__)
    parser.add_argument("--run-dir", required=True, help="the run folder the trainer prepared")
    args = parser.parse_args(argv)
    logs.configure_logging("trainer-job", "INFO", "text")
    return run(Path(args.run_dir))
