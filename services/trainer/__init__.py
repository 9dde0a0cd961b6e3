"""The trainer: the service side (runs, recipes, backends, rollout) here, what a job runs in `job/`."""
