"""The pipeline's steps as jobs, and their `longshot` subcommands."""


def registrars():
    """Functions that add each step's subcommand to the CLI, in pipeline order."""
    from jobs.steps import demo, eval, export_hf, import_hf, inspect, pack, preprocess, show, train

    return [demo.register, preprocess.register, pack.register, train.register, eval.register, inspect.register,
            show.register, import_hf.register, export_hf.register]
