"""Tasks: what a training run does with its data, model, loss and evaluation (pose, segmentation).

`registry.get_task(config, workdir)` returns the task named by `config.task`; the training loop
(`psa_jax.training`) reads everything task-specific through `registry.Task`.
"""
