"""The pipeline's steps as jobs, and their `longshot` subcommands."""


def registrars():
    """Functions that add each step's subcommand to the CLI, in pipeline order."""
    from jobs.steps import demo, inspect, preprocess

    return [demo.register, preprocess.register, inspect.register, train_register()]


def train_register():
    from jobs.steps.train import register  # longshot train / longshot resume

    return register
