"""Training: losses, optimizers and schedules, train step, checkpoints, tasks."""
