"""The process a job runs in: XLA flags, host memory, start-up, ahead-of-time compilation."""
