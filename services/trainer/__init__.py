"""The trainer: retraining runs, recipes, job backends, the model registry and rollout."""
