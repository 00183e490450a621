"""Exceptions of the training package. The CLI catches `TrainingError` once (exit code 2)."""


class TrainingError(Exception):
    """A training or evaluation request cannot be carried out (bad config, checkpoint, DB)."""


class SweepError(TrainingError):
    """A sweep file, output folder or backend problem, said in one line."""
