"""Training engine: the loop, checkpoints, the deployable bundle, schedules and run directories."""
