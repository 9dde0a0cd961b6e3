"""Tests of the trainer: runs, recipes, backends, registry and rollout."""
