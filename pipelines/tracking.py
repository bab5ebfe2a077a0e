"""MLflow bookkeeping for training runs, through ``MlflowClient`` (no global active run).

The driver creates the run (or reuses it on resume), world rank 0 logs per-epoch metrics into it,
and the driver finishes it with the model, plots and registry entry. Params never carry secrets:
URIs lose their user info and keys that look like credentials are dropped.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from pipelines.config import flatten

__all__ = ["RunLogger", "finish_run", "log_report", "start_run"]

_SECRET_KEY = re.compile(r"(secret|password|token|credential|access_key)", re.IGNORECASE)


def start_run(tracking_uri: str, experiment: str, run_name: str, params: dict[str, Any]) -> str:
    """Create a run named ``run_name`` in ``experiment`` with flattened, redacted params; its id."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        experiment_id = client.create_experiment(
            experiment, artifact_location=_artifact_root(tracking_uri)
        )
    run = client.create_run(experiment_id, run_name=run_name, tags={"hashray.run_name": run_name})
    flat = {k: v for k, v in flatten(params).items() if not _SECRET_KEY.search(k)}
    client.log_batch(
        run.info.run_id, params=[Param(k, _redact(str(v))[:6000]) for k, v in flat.items()]
    )
    return run.info.run_id


class RunLogger:
    """Logs numeric metrics into one existing run; used by world rank 0 inside Ray Train."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.client, self.run_id = MlflowClient(tracking_uri), run_id
        self.client.update_run(run_id, status="RUNNING")

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        """Log every int/float value of ``metrics`` at ``step``."""
        _log_metrics(self.client, self.run_id, metrics, step)


def finish_run(
    tracking_uri: str,
    run_id: str,
    model_dir: Path,
    history: list[dict[str, Any]],
    register_as: str | None,
) -> str | None:
    """Log the model directory and training curves, register the model, mark the run finished.

    Returns ``"name/version"`` of the registered model, or None when registration is off.
    """
    client = MlflowClient(tracking_uri)
    client.log_artifacts(run_id, str(model_dir), "model")
    with tempfile.TemporaryDirectory() as tmp:
        plot = Path(tmp) / "training_curves.png"
        _plot_history(history, plot)
        client.log_artifact(run_id, str(plot), "plots")
    version = None
    if register_as:
        try:
            client.create_registered_model(register_as)
        except Exception as err:  # already registered: add a version to it
            if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(
                err
            ):
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/model"
        created = client.create_model_version(register_as, source, run_id=run_id)
        version = f"{register_as}/{created.version}"
    client.set_terminated(run_id, status="FINISHED")
    return version


def log_report(
    tracking_uri: str, run_id: str, metrics: dict[str, float], files: list[Path]
) -> None:
    """Attach evaluation metrics and report files to an existing run."""
    client = MlflowClient(tracking_uri)
    _log_metrics(client, run_id, metrics, step=0)
    for path in files:
        client.log_artifact(run_id, str(path), "evaluation")


def _log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, Any], step: int) -> None:
    now = int(time.time() * 1000)
    values = [
        Metric(k, float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    client.log_batch(run_id, metrics=values)


def _artifact_root(tracking_uri: str) -> str | None:
    """Absolute artifact root beside a local store (the default is relative to the cwd)."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    if tracking_uri.startswith("file:") or "://" not in tracking_uri:
        return None  # a file store keeps artifacts inside itself
    return None  # a tracking server decides (e.g. its S3 artifact root)


def _redact(value: str) -> str:
    """Drop ``user:password@`` from URIs inside ``value``."""
    if "://" not in value or "@" not in value:
        return value
    parts = urlsplit(value)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def _plot_history(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    validated = [h for h in history if "val_map" in h]  # none when no validation split is held out
    fig, axes = plt.subplots(
        1, 2 if validated else 1, figsize=(9 if validated else 4.5, 3.5), squeeze=False
    )
    left = axes[0, 0]
    left.plot(epochs, [h["train_loss"] for h in history], marker="o")
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    if validated:
        right = axes[0, 1]
        right.plot(
            [h["epoch"] for h in validated],
            [h["val_map"] for h in validated],
            marker="o",
            color="tab:green",
        )
        right.set(xlabel="epoch", ylabel="tie-aware mAP@all", title="validation mAP")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
