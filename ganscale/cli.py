"""The `ganscale` command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from ganscale.errors import GanscaleError, describe

app = typer.Typer(help="ganscale: what GANs learned, at cluster scale.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)


def _fail(e: BaseException) -> None:
    line, code = describe(e)
    typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("ganscale").setLevel(logging.INFO)


@app.command()
def run(study: Path = typer.Argument(..., help="The study YAML."),
        stages: Optional[str] = typer.Option(None, help="Comma-separated stages to run (default: all)."),
        address: Optional[str] = typer.Option(None, help="Ray cluster address (default: the job's cluster, "
                                                        "or a new local one)."),
        verify: bool = typer.Option(False, "--verify", help="Check every stored sample chunk against its checksum "
                                                            "first and recompute the damaged ones."),
        force: bool = typer.Option(False, "--force", help="Replace a store that holds another study."),
        verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run a study through the pipeline. Completed work in its store is reused."""
    from ganscale.pipeline import STAGES, run_study
    from ganscale.study import load_study

    _setup_logging(verbose)
    try:
        chosen = [s.strip() for s in stages.split(",")] if stages else None
        for s in chosen or []:
            if s not in STAGES:
                raise GanscaleError(f"--stages: unknown stage '{s}' (known: {', '.join(STAGES)})")
        # run_study logs the sample stage's planned size first (printed here on stderr)
        results = run_study(load_study(study), chosen, address, verify=verify, force=force)
    except Exception as e:  # every failure ends in one line (-v logs the traceback)
        logging.getLogger("ganscale").debug("failure", exc_info=True)
        _fail(e)
    for name, result in results.items():
        typer.echo(f"{name}: {result}")


@app.command()
def status(study: Path = typer.Argument(..., help="The study YAML."),
           verify: bool = typer.Option(False, "--verify", help="Read every stored sample chunk and check it "
                                                               "against its checksum.")) -> None:
    """What is done and what is left, per stage, dataset and layer. Exit 1 if --verify finds damage."""
    from ganscale.pipeline import stage_status
    from ganscale.study import load_study

    try:
        loaded = load_study(study, check_files=False)
        rows = stage_status(loaded, verify=verify)
    except Exception as e:
        _fail(e)
    for row in rows:
        typer.echo(f"{row['stage']:<7} {row['item']:<24} {row['state']}")
    try:
        _print_planned_size(loaded)
    except Exception as e:
        _fail(e)
    if any(row["state"].startswith("damaged") for row in rows):
        raise typer.Exit(1)


def _print_planned_size(study) -> None:
    """The sample stage's planned size (samples, chunks, bytes per array and in all), before any work."""
    from ganscale import sample

    for line in sample.planned_size_lines(sample.planned_size(study)):
        typer.echo(line)


def demo_study_path(out: Path) -> Path:
    """Write the demo study into `out` (store out/demo.zarr) and return its path."""
    template = Path(__file__).parent / "toyworld" / "demo.yaml"
    out.mkdir(parents=True, exist_ok=True)
    target = out / "demo.yaml"
    target.write_text(template.read_text())
    return target


@app.command()
def demo(out: Path = typer.Option(Path("ganscale-demo"), help="Folder for the demo's study, store and report."),
         address: Optional[str] = typer.Option(None, help="Ray cluster address (default: a new local one).")) -> None:
    """Run the demo study: the toy world's real scenes against its generators."""
    from ganscale.pipeline import run_study
    from ganscale.study import load_study

    _setup_logging(True)
    try:
        study_file = demo_study_path(out)
        results = run_study(load_study(study_file), None, address)
    except Exception as e:
        _fail(e)
    for name, result in results.items():
        typer.echo(f"{name}: {result}")
    typer.echo(f"demo study: {study_file}; store: {out / 'demo.zarr'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
