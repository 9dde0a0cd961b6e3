"""The job side of the trainer: what runs in a job process or pod, and the run folder it shares."""
