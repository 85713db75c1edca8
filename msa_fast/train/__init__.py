"""The training engine: compiled train step, schedules, checkpoints with exact resume, multi-seed runs."""
