"""``bkgdb demo``: the whole chain on simulated data."""

from pathlib import Path

import typer

from bkgdb.cli.common import err, open_catalogue, out, reports_errors

__all__ = ["register"]


@reports_errors
def demo(
    folder: Path = typer.Argument(Path("bkgdb-demo"), help="Folder for everything the demo writes."),
    jobs: int = typer.Option(2, "--jobs", "-j", min=1, help="Worker processes for indexing."),
) -> None:
    """Simulate a datastore from a known background, index it, attach backgrounds, check the result."""
    report = open_catalogue().demo(folder, jobs=jobs, progress=lambda line: err.print(line, highlight=False))
    lines = [
        f"simulated datastore  {report.datastore}  ({report.n_runs} runs)",
        f"database             {report.database_url}",
        f"config               {report.config}",
        f"index                {report.index_summary}",
        f"attach               {report.attach_summary}",
        f"check                run {report.target_obs_id}: background from {report.n_background_runs} runs; "
        f"model / truth in gammapy = {report.ratio:.3f} +- {report.ratio_error:.3f}, "
        f"chi2 = {report.chi2:.1f} for {report.ndof} bins",
        f"gammapy              FoVBackgroundMaker norm of run {report.target_obs_id} with it: "
        f"{report.fov_norm:.3f} +- {report.fov_norm_error:.3f} (1: it predicts the counts)",
        "",
        "Open it in gammapy:",
        "  from gammapy.data import DataStore",
        f"  DataStore.from_dir('{report.attached}').obs({report.target_obs_id}).bkg",
    ]
    out.print("\n".join(lines), highlight=False)


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command()(demo)
