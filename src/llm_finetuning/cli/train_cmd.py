"""`llmft train`: run a training job from a YAML config."""

from __future__ import annotations

import typer

from llm_finetuning.cli.common import console, setup_logging, user_errors
from llm_finetuning.config import load_config
from llm_finetuning.runs.rundir import check_run_dir


@user_errors
def train(
    config: str = typer.Argument(..., help="YAML config file."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides: training.learning_rate=1e-4 ..."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run directory from its last checkpoint."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    nproc: int = typer.Option(
        1,
        "--nproc",
        help="Processes on this machine (one per GPU); above 1 the run is "
        "launched through accelerate, sharing the model as `distributed.strategy` says.",
    ),
    nnodes: int = typer.Option(1, "--nnodes", help="Machines taking part (run the same command on each)."),
    node_rank: int = typer.Option(0, "--node-rank", help="This machine's index (0 hosts the main process)."),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="Address of machine 0."),
    master_port: int = typer.Option(None, "--master-port", help="Rendezvous port on machine 0."),
) -> None:
    """Train a model from CONFIG. Everything about the run is written to its `output_dir`."""
    from llm_finetuning.launch import Topology, in_launched_process, launch
    from llm_finetuning.runs.distributed import is_main

    setup_logging(verbose, quiet=not is_main())
    if overwrite and resume:
        raise typer.BadParameter("--overwrite and --resume cannot be used together. Choose one.")
    topology = Topology(nproc, nnodes, node_rank, master_addr, master_port)
    from llm_finetuning.stages import is_stages_file

    if topology.distributed and is_stages_file(config):
        raise typer.BadParameter("--nproc/--nnodes take one config; launch each stage's config on its own")
    if topology.distributed and not in_launched_process():
        resolved = load_config(config, overrides or [])  # fail here, once, before starting any process
        if node_rank == 0:
            check_run_dir(resolved.output_dir, overwrite=overwrite, resume=resume)
        flags = [*(["--overwrite"] if overwrite else []), *(["--resume"] if resume else [])]
        code = launch(topology, ["train", config, *(overrides or []), *flags, *(["-v"] if verbose else [])])
        if code:
            console.print(
                f"[red]failed[/]: a training process exited with code {code}; its error is above. The other "
                "processes were stopped."
            )
            raise typer.Exit(1)
        return
    if is_stages_file(config):
        if overrides or resume:
            raise typer.BadParameter("a stages file takes no overrides or --resume; edit the stage configs instead")
        from llm_finetuning.stages import run_stages

        for stage in run_stages(config, overwrite=overwrite):
            console.print(f"[green]{stage.status}[/] stage {stage.name}: {stage.run_dir}")
        return
    resolved = load_config(config, overrides or [])
    if is_main():  # in a launched run, the main process alone owns the run directory
        check_run_dir(resolved.output_dir, overwrite=overwrite, resume=resume)  # fail before the slow imports
    from llm_finetuning.train import train as run_training  # heavy imports only once the config is valid

    result = run_training(resolved, overwrite=overwrite, resume=resume)
    if not is_main():
        return
    color = "green" if result.status == "completed" else "yellow"
    console.print(f"[{color}]{result.status}[/]: run directory {result.run.root}")
    for key in ("train_loss", "eval_loss"):
        if key in result.metrics:
            console.print(f"  {key}: {result.metrics[key]:.4f}")
    if result.status == "interrupted":
        console.print(f"  resume with: llmft train {config} --resume")
        raise typer.Exit(130)
