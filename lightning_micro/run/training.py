"""One training run, from a composed config to a trained, tested, exported and measured network.

:func:`train` is what ``train.py`` calls; tests call it with a config from Hydra's ``compose()``.
All config nodes become objects through :mod:`lightning_micro.run.instantiate`.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only
from omegaconf import DictConfig

from lightning_micro.artifact.format import ARTIFACT_NAME, load_compressed, save_compressed
from lightning_micro.artifact.onnx import ONNX_NAME, OnnxExportError, OnnxRuntimeNet, compare_outputs, write_onnx
from lightning_micro.callbacks.interruption import InterruptionCheckpoint
from lightning_micro.callbacks.technique import CompressionTechnique, check_same_techniques
from lightning_micro.contract import export_compressed
from lightning_micro.core.memory_layout import apply_layout, choose_layout, layout_of
from lightning_micro.report import measure as reporting
from lightning_micro.report.pictures import layer_picture
from lightning_micro.run.classifier import ClassifierModule
from lightning_micro.run.failures import RunInterrupted, held_logs
from lightning_micro.run.instantiate import ConfigError, instantiate, instantiate_each, to_plain
from lightning_micro.run.preflight import check_run_config, read_checkpoint

REPORT_NAME = "compression_report.json"
LAYERS_PICTURE = "layers.png"  # the per-layer picture of a compressed run (lightning_micro.report.pictures)
# What a finished (or started) run leaves in its directory; finding any of these means the directory is taken.
RUN_OUTPUTS = (REPORT_NAME, ARTIFACT_NAME, "checkpoints", "wandb", "csv")


def check_output_dir_is_free(output_dir: Path) -> None:
    """Refuse a run directory that already holds another run's outputs, so nothing on disk is overwritten."""
    taken = sorted(name for name in RUN_OUTPUTS if (output_dir / name).exists())
    if taken:
        raise ConfigError(
            "paths.output_dir",
            f"{output_dir} already holds a run's outputs ({', '.join(taken)}); nothing was changed. "
            "Choose a new directory (the default hydra.run.dir is unique per start).",
        )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit ``cfg.model`` on ``cfg.data`` with the configured callbacks, compression and loggers; then test the
    final weights, export the artifact and write the compression report into ``cfg.paths.output_dir``.

    Returns:
        The run's metrics: everything logged (``val/acc``, ``test/acc``, ...) and, on rank zero, the report.

    Raises:
        ConfigError: a config value that cannot work, named by its key, before any training step.
    """
    check_run_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if rank_zero_only.rank == 0:
        check_output_dir_is_free(output_dir)
    ckpt_path = cfg.get("ckpt_path")
    checkpoint = read_checkpoint(ckpt_path) if ckpt_path is not None else None
    report_settings = cfg.get("report") or {}

    with held_logs("lightning.pytorch", "lightning.fabric"):  # printed once the run is known to start
        L.seed_everything(cfg.seed, workers=True)
        datamodule = instantiate(cfg.data, "data")
        module = instantiate(cfg.model, "model")
        if not isinstance(module, ClassifierModule) or module.net_spec is None:
            raise ConfigError("model", "must build a lightning_micro.run.classifier.ClassifierModule whose net is "
                                       "a config node")
        if rank_zero_only.rank == 0:
            datamodule.prepare_data()  # a missing or damaged dataset fails here, before loggers start
        techniques = build_techniques(cfg.get("compression"), module)
        callbacks = [*instantiate_each(cfg.get("callbacks"), "callbacks"), *techniques]
        loggers: list[Logger] = instantiate_each(cfg.get("logger"), "logger")
        trainer: L.Trainer = instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)
        check_composition(cfg.get("compression"), techniques, trainer, module)
        if checkpoint is not None:
            check_resume(checkpoint, cfg.get("compression"), callbacks)
    for logger in loggers:
        logger.log_hyperparams(to_plain(cfg))

    fit(trainer, module, datamodule, ckpt_path)
    if trainer.global_step == 0 and not report_settings.get("allow_untrained", False):
        raise ConfigError("trainer", "the fit made no optimizer step, so there is nothing to export (resumed from a "
                                     "finished run?); set report.allow_untrained=true to export the network anyway")
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    trainer.test(module, datamodule=datamodule)  # the final weights: what the compression produced
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    if trainer.is_global_zero:
        report = write_run_report(cfg, module, trainer, metrics, output_dir)
        picture = output_dir / LAYERS_PICTURE
        for logger in loggers:
            log_summary(logger, report)
            if isinstance(logger, WandbLogger) and picture.is_file():
                logger.log_image(key="compression/layers", images=[str(picture)])
        metrics.update(report)
    for logger in loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            line = wandb_line(logger)
            logger.experiment.finish()
            rank_zero_info(line)
    last_word = reporting.headline(metrics) if trainer.is_global_zero else None
    if last_word:
        rank_zero_info(last_word)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # stop gloo's threads before the interpreter does: otherwise a DDP process can abort on exit
        torch.distributed.destroy_process_group()
    return metrics


def fit(trainer: L.Trainer, module: ClassifierModule, datamodule: Any, ckpt_path: str | None) -> None:
    """``trainer.fit``, with an interruption (SIGTERM, Ctrl-C) turned into :class:`RunInterrupted` naming the
    checkpoint that continues the run."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit as stop:  # Lightning raises SIGTERMException on SIGTERM, and exits(1) after a Ctrl-C
        if not trainer.interrupted:
            raise
        signal_name, code = ("SIGTERM", 143) if isinstance(stop, SIGTERMException) else ("Ctrl-C", 130)
        saved = [c.ckpt_path for c in trainer.callbacks
                 if isinstance(c, InterruptionCheckpoint) and Path(c.ckpt_path).is_file()]
        resume = (f"continue it with ckpt_path={saved[0]}" if saved else
                  "no checkpoint was written (add callbacks=default or InterruptionCheckpoint to keep one)")
        raise RunInterrupted(f"training stopped by {signal_name} at step {trainer.global_step} (epoch "
                             f"{trainer.current_epoch}); nothing was exported; {resume}", code) from stop


def check_resume(checkpoint: Mapping[str, Any], node: Any, callbacks: list[Any]) -> None:
    """The checkpoint's compression list must be this run's: ``ckpt_path`` names both lists when it is not."""
    try:
        check_same_techniques(checkpoint, callbacks)
    except ValueError as err:
        names = ", ".join(str(name) for name in (node or {}))
        raise ConfigError("ckpt_path", f"{err} (this run: compression=[{names}])") from err


def build_techniques(node: Any, module: ClassifierModule) -> list[Any]:
    """The compression callbacks, in list order, each checked against the network before training
    (``select_on`` raises ``ValueError`` for a selection that matches nothing)."""
    techniques = instantiate_each(node, "compression")
    for name, technique in zip(node or {}, techniques, strict=True):
        if not isinstance(technique, CompressionTechnique):
            raise ConfigError(f"compression.{name}", f"{type(technique).__name__} is not a compression technique "
                              "(a subclass of lightning_micro.callbacks.CompressionTechnique)")
        try:
            technique.select_on(module)
        except ValueError as err:
            raise ConfigError(f"compression.{name}", str(err)) from err
    return techniques


def check_composition(node: Any, techniques: list[CompressionTechnique], trainer: L.Trainer,
                      module: ClassifierModule) -> None:
    """Every technique's moments and pairing with the others, checked before loggers start (each technique checks
    again in its ``setup``): a combination that cannot work is a config error naming the technique's key."""
    for name, technique in zip(node or {}, techniques, strict=True):
        try:
            technique.check_run(trainer, module)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"compression.{name}", str(err)) from err


def write_run_report(
    cfg: DictConfig, module: ClassifierModule, trainer: L.Trainer, metrics: Mapping[str, float], output_dir: Path
) -> dict[str, Any]:
    """Export the artifact, measure it against the dense network, write ``compression_report.json`` and print
    it as a table. Techniques add fields through ``report_fields(net)`` on their callback, and choose how
    their tensors are stored through ``export_codecs(net) -> {state-dict key: codec}``."""
    settings = cfg.get("report") or {}
    net_spec = module.net_spec
    artifact_path = output_dir / ARTIFACT_NAME
    # finalizes every technique (e.g. int8 conversion) and times the sparse kernels at the report's batch sizes
    batch_sizes, threads = list(settings.get("latency_batch_sizes", (1, 64))), int(settings.get("latency_threads", 1))
    layout_setting = str(settings.get("memory_layout", "auto"))
    export_compressed(trainer, artifact_path, module, sparse_kernels=str(settings.get("sparse_kernels", "auto")),
                      kernel_batch_sizes=batch_sizes, kernel_threads=threads, memory_layout=layout_setting)
    # Measure what a user gets from the file, not the training copy. The run's own config named the network, so
    # its class is trusted here (a user's network class too, imported by the run already).
    deployed = load_compressed(artifact_path, trusted=[net_spec["_target_"]])
    with tempfile.TemporaryDirectory() as tmp:
        dense = instantiate(net_spec, "model.net").eval()
        dense_path = Path(tmp) / "dense.safetensors"
        save_compressed(dense, net_spec, dense_path)
        # the dense network in its own fastest layout, chosen the same way, so that a speed-up is not the layout's
        dense_layout = (choose_layout(dense, module.input_shape, batch_sizes, threads)[0]
                        if layout_setting == "auto" else layout_setting)
        apply_layout(dense, dense_layout)
        onnx_net = onnx_dense = None
        if settings.get("onnx", True):  # derived from the artifact, as lightning-micro-export would write it
            onnx_net, onnx_dense = onnx_runtime_nets(deployed, dense, module.input_shape, output_dir, Path(tmp),
                                                     int(settings.get("latency_threads", 1)))
        report = reporting.build_report(
            deployed,
            dense,
            module.input_shape,
            artifact_path,
            dense_path,
            metrics={k: v for k, v in metrics.items() if k.startswith(("test/", "val/"))},
            latency_batch_sizes=list(settings.get("latency_batch_sizes", (1, 64))),
            latency_threads=int(settings.get("latency_threads", 1)),
            latency_min_run_time=float(settings.get("latency_min_run_time", 0.2)),
            onnx_net=onnx_net,
            onnx_dense_net=onnx_dense,
        )
    if onnx_net is not None:  # the ONNX model's outputs against the artifact's, on the batches the run tested
        tested = trainer.num_test_batches[0]  # an int, or inf for a loader of unknown length
        batches = itertools.islice((x for x, _ in trainer.datamodule.test_dataloader()),
                                   None if math.isinf(tested) else int(tested))
        parity = compare_outputs(deployed, onnx_net, batches)
        report.update({"onnx/max_abs_diff": parity["max_abs_diff"],
                       "onnx/argmax_agreement": parity["argmax_agreement"]})
    report.update({"layout/artifact": layout_of(deployed), "layout/dense": dense_layout})
    for callback in trainer.callbacks:
        if isinstance(callback, CompressionTechnique):
            report.update(callback.report_fields(module.net))
    budget = settings.get("byte_budget")
    if budget is not None and "val/acc" in report:  # what a study under a size budget maximizes
        within = report["size/artifact_bytes"] <= budget
        report.update({"budget/bytes": int(budget), "budget/within": int(within),
                       "budget/val_acc": report["val/acc"] if within else report["val/acc"] - 1.0})
    reporting.write_report(report, output_dir / REPORT_NAME)
    if any(isinstance(c, CompressionTechnique) for c in trainer.callbacks):
        name = str((module.net_spec or {}).get("_target_", type(module.net).__name__)).rsplit(".", 1)[-1]
        layer_picture(report, output_dir / LAYERS_PICTURE, title=f"{name}: per-layer compression")
    from rich.console import Console

    console = Console()
    console.print(reporting.render_table(report))
    runtimes = reporting.render_runtimes(report)
    if runtimes is not None:
        console.print(runtimes)
    note = reporting.latency_note(report)
    if note:
        console.print(note, soft_wrap=True)
    rank_zero_info(written_files_line(output_dir))
    return report


def onnx_runtime_nets(deployed: torch.nn.Module, dense: torch.nn.Module, input_shape: Any, output_dir: Path,
                      tmp: Path, threads: int) -> tuple[OnnxRuntimeNet | None, OnnxRuntimeNet | None]:
    """The artifact's ONNX model (written as ``model.onnx``) and the dense network's (a temporary file), each in an
    ONNX Runtime session; ``(None, None)`` with the reason logged when the network cannot be exported."""
    try:
        write_onnx(deployed, input_shape, output_dir / ONNX_NAME)
        write_onnx(dense, input_shape, tmp / "dense.onnx")
    except OnnxExportError as err:
        rank_zero_info(f"No ONNX model: {err}; the report times PyTorch alone")
        return None, None
    return OnnxRuntimeNet(output_dir / ONNX_NAME, threads), OnnxRuntimeNet(tmp / "dense.onnx", threads)


def written_files_line(output_dir: Path) -> str:
    """What the run left in ``output_dir``, as one line (only what is there: a ``debug=fdr`` run keeps no
    checkpoint)."""
    names = [(REPORT_NAME, "report"), (ARTIFACT_NAME, "artifact"), (ONNX_NAME, "ONNX model"),
             (LAYERS_PICTURE, "per-layer picture")]
    kept = [f"{label} {name}" for name, label in names if (output_dir / name).is_file()]
    checkpoints = sorted(p.name for p in (output_dir / "checkpoints").glob("*.ckpt"))
    if checkpoints:
        kept.append(f"checkpoints/ ({', '.join(checkpoints)})")
    return f"Wrote {', '.join(kept) or 'nothing'} in {output_dir}"


def wandb_line(logger: WandbLogger) -> str:
    """Where W&B's run files are, and how to upload them when the run was offline."""
    run_dir = Path(logger.experiment.dir).parent
    run = logger.experiment
    offline = bool(getattr(run, "offline", False)) or run.settings.mode in ("offline", "dryrun")
    return (f"W&B offline run in {run_dir} (upload it later with: wandb sync {run_dir})" if offline
            else f"W&B run: {run.url}")


def log_summary(logger: Logger, report: Mapping[str, Any]) -> None:
    """Put the report into the logger: W&B's run summary; other loggers get the numbers as one last row."""
    if isinstance(logger, WandbLogger):
        logger.experiment.summary.update(dict(report))
        return
    logger.log_metrics({f"report/{k}": v for k, v in report.items() if isinstance(v, (int, float))})
    logger.save()


def optimized_value(metrics: Mapping[str, Any], name: str | None) -> float | None:
    """The value a sweeper optimizes (``optimized_metric``), or ``None`` when no metric is named."""
    if not name:
        return None
    if name not in metrics:
        raise ConfigError("optimized_metric", f"{name!r} was not measured; measured: {sorted(metrics)}")
    return float(metrics[name])
