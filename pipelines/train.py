"""``hashray train``: a Ray Train ``TorchTrainer`` around ``hashing.training.fit``.

The driver holds out a validation split from train (written to ``split.json``), opens or reuses
the MLflow run, and starts the workers. Each worker trains on its shard of the Ray Dataset; world
rank 0 validates, logs to MLflow and writes one checkpoint per epoch (``epoch-NNN``). Running the
same command again resumes from the last checkpoint into the same MLflow run, and once a run has
finished it returns the stored result instead of training twice. The best epoch on the validation
split (never the queries) becomes ``<out>/<name>/model`` and the run's registered MLflow model;
with ``val_fraction`` 0 nothing is held out and the last epoch does. The worker adds only Ray's
parts to ``fit``: its data shard, DDP wrapping, and (as callbacks) MLflow metrics, the epoch line
and checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray
import ray.train
import ray.train.torch
import torch

from hashing import losses, models, rotations, splits, training
from hashing.augment import RandomAffine
from hashing.labels import multi_hot_from_lists
from hashing.recipe import Recipe
from pipelines import cluster, console, storage, tracking
from pipelines.config import TrainConfig, default_tracking_uri
from pipelines.contracts import ImageSpec, ModelCard
from pipelines.dataset import PreparedDataset
from pipelines.images import decode_image

__all__ = ["train"]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
RUN_FILE = "run.json"
# Normalisation applied to uint8 pixels; saved in model.json so encode and serve match training.
PIXEL_MEAN, PIXEL_STD = 0.5, 0.5
# Decoded training sets up to this size are decoded once instead of once per epoch.
MATERIALIZE_BYTES = 1 << 30


def train(
    config: TrainConfig, *, progress: bool = True, stop_after_epochs: int | None = None
) -> dict[str, Any]:
    """Train (or resume, or return the finished) run described by ``config``.

    ``stop_after_epochs`` ends this invocation early, as an interruption would; the next call
    resumes. Returns a summary: run name and dir, MLflow run id, model dir and URI, best epoch and
    validation mAP, status (``finished`` or ``stopped``).
    """
    dataset = PreparedDataset.open(config.data)
    stages = losses.build(
        config.recipe.method,
        bits=config.recipe.bits,
        num_classes=dataset.num_classes,
        **config.recipe.loss_params,
    ).stages
    pretrain_epochs, rotation = config.recipe.stage_plan(stages)  # refuses rotation w/o validation
    name = config.run_name(dataset.info.name)
    run_dir = Path(config.out).resolve() / name
    run_file = run_dir / RUN_FILE
    if run_file.exists() and storage.read_json(str(run_file)).get("status") == "finished":
        log.info("run %s already finished; delete %s to train again", name, run_dir)
        return storage.read_json(str(run_file))

    tracking_uri = config.tracking_uri or default_tracking_uri()
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = storage.read_json(str(run_file)) if run_file.exists() else {}
    mlflow_run_id = previous.get("mlflow_run_id") or tracking.start_run(
        tracking_uri, config.experiment, name, params=config.to_dict()
    )
    storage.write_json(str(run_dir / "config.json"), config.to_dict())
    storage.write_json(
        str(run_file), {"name": name, "status": "running", "mlflow_run_id": mlflow_run_id}
    )

    # Workers print one line per epoch; Ray Data's per-operator bars would bury it.
    data_context = ray.data.DataContext.get_current()
    data_context.enable_progress_bars = False
    data_context.print_on_execution_start = False
    fit_ids, val_ids, val_db_ids = _validation_split(dataset, config)
    storage.write_json(
        str(run_dir / "split.json"), {"validation": val_ids, "seed": config.recipe.seed}
    )
    loop_config = {
        "recipe": config.recipe.to_dict(),
        "num_classes": dataset.num_classes,
        "in_channels": dataset.image_shape[2],
        "train_files": dataset.split_files("train"),
        "val_ids": val_ids,
        "val_db_ids": val_db_ids,
        "tracking_uri": tracking_uri,
        "mlflow_run_id": mlflow_run_id,
        "stop_after_epochs": stop_after_epochs,
        "progress": progress,
    }
    trainer = ray.train.torch.TorchTrainer(
        _train_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers,
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker, "GPU": config.gpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name="ray",
            storage_path=str(run_dir),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # epoch lines, not chatter
        ),
        datasets={"train": _training_dataset(dataset, fit_ids)},
    )
    result = cluster.fit(trainer)  # Ctrl-C interrupts it as any command (pipelines/cluster.py)
    with result.checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)

    summary = {
        "name": name,
        "run_dir": str(run_dir),
        "mlflow_run_id": mlflow_run_id,
        "tracking_uri": tracking_uri,
        "epochs_done": state["epoch"] + 1,
        "best_epoch": state["best_epoch"] + 1,
        "best_val_map": state["best_val_map"],
        "train_images_per_s": float(np.mean([h["train_images_per_s"] for h in state["history"]])),
        "status": "running",
    }
    if state["epoch"] + 1 < pretrain_epochs + config.recipe.epochs:
        summary["status"] = "stopped"
        storage.write_json(str(run_file), summary)
        return summary

    model = models.build(
        config.recipe.backbone,
        bits=config.recipe.bits,
        in_channels=dataset.image_shape[2],
        shift_average=config.recipe.shift_average,
    )
    model.load_state_dict(state["best_model"])
    if rotation != "none":
        model.set_rotation(
            _fit_rotation(model, rotation, dataset, val_ids + val_db_ids, config.recipe.seed)
        )
    model_dir = run_dir / "model"
    height, width, channels = dataset.image_shape
    card = ModelCard(
        **model.config,
        has_rotation=model.rotation is not None,
        method=config.recipe.method,
        image=ImageSpec(height=height, width=width, channels=channels),
        mean=PIXEL_MEAN,
        std=PIXEL_STD,
        classes=dataset.classes,
        dataset=dataset.info.name,
        model_version=mlflow_run_id,
        mlflow_run_id=mlflow_run_id,
        best_epoch=state["best_epoch"] + 1,
        best_val_map=state["best_val_map"],
        rotation=rotation,
        pretrain_epochs=pretrain_epochs,
    )
    models.save_model(model, model_dir)  # model.pt; the card below replaces its bare model.json
    card.write(model_dir)
    registered = tracking.finish_run(
        tracking_uri,
        mlflow_run_id,
        model_dir,
        state["history"],
        register_as=config.register_as or f"hashray-{name}",
    )
    summary.update(
        status="finished",
        model_dir=str(model_dir),
        model_uri=f"runs:/{mlflow_run_id}/model",
        registered_model=registered,
    )
    storage.write_json(str(run_file), summary)
    return summary


def _fit_rotation(
    model: models.HashModel, kind: str, dataset: PreparedDataset, ids: list[str], seed: int
) -> torch.Tensor:
    """Post-hoc rotation (ITQ or the SDSH mAP search) fitted on training-side rows, never queries.

    The rows are the validation split plus the validation database sample of the fit rows: the
    SDSH search needs thousands of pseudo-queries, more than the held-out split alone holds.
    """
    images, labels = _load_rows(dataset.split_files("train"), ids, dataset.num_classes)
    outputs, labels = training.compute_outputs(model, _batches(images, labels), torch.device("cpu"))
    return rotations.fit_rotation(kind, outputs, labels, seed)


def _validation_split(
    dataset: PreparedDataset, config: TrainConfig
) -> tuple[list[str], list[str], list[str]]:
    """(fit ids, validation query ids, validation database ids), all sorted; seeded by the recipe.

    ``val_fraction`` 0 holds nothing out: every training row is fit and both validation lists
    are empty (the last epoch becomes the model).
    """
    ids = np.sort(_read_column(dataset.split_files("train"), "id"))
    if config.recipe.val_fraction == 0:
        return ids.tolist(), [], []
    keep, held = splits.holdout(len(ids), config.recipe.val_fraction, seed=config.recipe.seed)
    if len(held) == 0 or len(keep) == 0:
        raise ValueError(
            f"validation split is empty: {len(ids)} training rows with val_fraction "
            f"{config.recipe.val_fraction}; use a larger dataset or fraction"
        )
    rng = np.random.default_rng(config.recipe.seed)
    val = np.sort(rng.permutation(ids[held])[: config.val_max_queries])
    val_db = np.sort(rng.permutation(ids[keep])[: config.val_max_database])
    return ids[keep].tolist(), val.tolist(), val_db.tolist()


def _read_column(files: list[str], column: str) -> np.ndarray:
    fs, _ = storage.filesystem(files[0])
    paths = [storage.filesystem(f)[1] for f in files]
    return (
        pads.dataset(paths, filesystem=fs, format="parquet")
        .to_table(columns=[column])[column]
        .to_numpy(zero_copy_only=False)
    )


def _load_rows(files: list[str], ids: list[str], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images (n x H x W x C) and multi-hot labels of the rows with ``ids``, in id order."""
    fs, _ = storage.filesystem(files[0])
    data = pads.dataset([storage.filesystem(f)[1] for f in files], filesystem=fs, format="parquet")
    table = data.to_table(
        columns=["id", "image", "labels"], filter=pc.field("id").isin(ids)
    ).sort_by("id")
    return _decode(
        {
            "image": table["image"].to_numpy(zero_copy_only=False),
            "labels": table["labels"].to_pylist(),
        },
        num_classes,
    ).values()


def _decode(batch: dict[str, Any], num_classes: int) -> dict[str, np.ndarray]:
    """Batch of stored rows -> {"image": uint8 (n x H x W x C), "labels": float32
    multi-hot (n x C)}."""
    images = np.stack([decode_image(data) for data in batch["image"]])
    labels = multi_hot_from_lists(batch["labels"], num_classes, np.float32)
    return {"image": images, "labels": labels}


def _training_dataset(dataset: PreparedDataset, fit_ids: list[str]) -> ray.data.Dataset:
    """The fit rows of the train split, decoded to uint8 arrays and multi-hot labels.

    Small sets are decoded once and kept in the object store; large ones stream (and decode)
    anew each epoch, which keeps memory flat whatever the corpus size.
    """
    keep = set(fit_ids)

    def select_and_decode(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mask = np.fromiter(
            (row_id in keep for row_id in batch["id"]), dtype=bool, count=len(batch["id"])
        )
        return _decode(
            {"image": batch["image"][mask], "labels": batch["labels"][mask]}, dataset.num_classes
        )

    decoded = dataset.read_split("train").map_batches(select_and_decode, batch_format="numpy")
    height, width, channels = dataset.image_shape
    if len(fit_ids) * height * width * channels <= MATERIALIZE_BYTES:
        return decoded.materialize()
    return decoded


def _train_loop(cfg: dict[str, Any]) -> None:
    """Per-worker training function (Ray Train); rank 0 validates, logs and checkpoints."""
    recipe = Recipe.from_dict(cfg["recipe"])
    _quiet_report_log()
    context = ray.train.get_context()
    rank, local_size = context.get_world_rank(), context.get_local_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))
    torch.manual_seed(recipe.seed)  # identical initial weights on every rank
    device = ray.train.torch.get_device()

    model = models.build(
        recipe.backbone,
        bits=recipe.bits,
        in_channels=cfg["in_channels"],
        pretrained_path=recipe.pretrained_path,
        shift_average=recipe.shift_average,
    )
    setup = training.build_training(recipe, model, cfg["num_classes"])
    state = training.FitState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            path = Path(directory) / CHECKPOINT_FILE
            state = setup.restore(torch.load(path, map_location="cpu", weights_only=True))
    # The classifier (pre-training) and the loss (hashing) each sit idle in one phase.
    ddp_kwargs = {"find_unused_parameters": True} if setup.pretrain_epochs else None
    setup.objective = ray.train.torch.prepare_model(
        setup.objective, parallel_strategy_kwargs=ddp_kwargs
    )
    augment = RandomAffine(
        hflip=recipe.hflip,
        generator=torch.Generator().manual_seed(recipe.seed + 1000 * rank + state.epoch + 1),
    )
    shard = ray.train.get_dataset_shard("train")

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # numpy batches, converted once here (train_one_epoch moves them to the device)
        for batch in shard.iter_batches(
            batch_size=recipe.batch_size,
            batch_format="numpy",
            prefetch_batches=2,
            local_shuffle_buffer_size=4096,
            local_shuffle_seed=recipe.seed + epoch,
        ):
            images = training.images_to_tensor(batch["image"], PIXEL_MEAN, PIXEL_STD)
            yield images, torch.from_numpy(batch["labels"])

    validate, callbacks = None, [_report_only]
    if rank == 0:
        if cfg["val_ids"]:  # none held out (val_fraction 0): the last epoch is the model
            validation = [
                _load_rows(cfg["train_files"], cfg[key], cfg["num_classes"])
                for key in ("val_ids", "val_db_ids")
            ]
            validate = functools.partial(_validate, validation=validation, device=device)
        logger = tracking.RunLogger(cfg["tracking_uri"], cfg["mlflow_run_id"])
        callbacks = [lambda epoch, metrics, _: logger.log_metrics(metrics, step=epoch + 1)]
        if cfg["progress"]:
            callbacks.append(functools.partial(_print_epoch, epochs=setup.epochs))
        callbacks.append(functools.partial(_report_checkpoint, setup=setup))
    training.fit(
        setup,
        batches,
        device,
        validate=validate,
        augment=augment if recipe.augment else None,
        state=state,
        callbacks=callbacks,
        stop_after_epochs=cfg["stop_after_epochs"],
    )


def _report_only(epoch: int, metrics: dict[str, float], state: training.FitState) -> None:
    """Ranks other than 0: report the epoch's metrics, as every rank does each epoch."""
    ray.train.report(metrics)


def _print_epoch(
    epoch: int, metrics: dict[str, float], state: training.FitState, *, epochs: int
) -> None:
    console.worker_line(training.epoch_line(metrics, epochs))


def _report_checkpoint(
    epoch: int,
    metrics: dict[str, float],
    state: training.FitState,
    *,
    setup: training.TrainingSetup,
) -> None:
    """Rank 0: report the epoch's metrics with its checkpoint (``epoch-NNN``)."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(setup.checkpoint(state), Path(tmp) / CHECKPOINT_FILE)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"epoch-{epoch + 1:03d}",
        )


def _quiet_report_log() -> None:
    """Drop Ray Train's "Reporting training result" console line, logged at every epoch.

    Ray 2.60 logs it under a logger named by its file path, outside "ray.train", so LoggingConfig
    cannot quiet it; the epoch line says the same. A Ray without that module logs nothing here.
    """
    with contextlib.suppress(ImportError):
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def _validate(
    model: torch.nn.Module, validation: list[tuple[np.ndarray, np.ndarray]], device: torch.device
) -> float:
    """Tie-aware mAP@all of validation queries against the validation database."""
    (q_images, q_labels), (db_images, db_labels) = validation
    result = training.evaluate_retrieval(
        model, _batches(q_images, q_labels), _batches(db_images, db_labels), device
    )
    return float(result["map_tie_aware"])  # a plain float: checkpoints load with weights_only=True


def _batches(images: np.ndarray, labels: np.ndarray) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Decoded rows as normalised (images, labels) batches of 512, for encoding outputs."""
    for start in range(0, len(images), 512):
        yield (
            training.images_to_tensor(images[start : start + 512], PIXEL_MEAN, PIXEL_STD),
            labels[start : start + 512],
        )
