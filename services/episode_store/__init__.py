"""The episode store: ingest, labels and queries over recorded grasp episodes."""
