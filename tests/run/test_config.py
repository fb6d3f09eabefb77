"""Every option of every config group composes, and its nodes instantiate."""

from __future__ import annotations

import hydra.utils
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lightning_micro.run.classifier import ClassifierModule
from lightning_micro.run.instantiate import ConfigError, instantiate, instantiate_each
from tests.helpers.config import CONF, compose_cfg, mnist_dir


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("data", options("data"))
def test_data_options_instantiate(data, tmp_path):
    cfg = compose_cfg([f"data={data}", "model=mobilenet", f"paths.data_dir={tmp_path}"], tmp_path)
    datamodule = instantiate(cfg.data, "data")
    assert list(datamodule.input_shape) == list(cfg.data.input_shape)
    module = instantiate(cfg.model, "model")  # mobilenet takes any channel count and size
    assert isinstance(module, ClassifierModule)


@pytest.mark.parametrize("model", options("model"))
def test_model_options_instantiate(model, tmp_path):
    cfg = compose_cfg([f"model={model}", "data=mnist", f"paths.data_dir={tmp_path}"], tmp_path)
    module = instantiate(cfg.model, "model")
    assert module(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert module.net_spec["_target_"] == cfg.model.net._target_


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_options_instantiate(trainer, tmp_path):
    cfg = compose_cfg([f"trainer={trainer}"], tmp_path)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="^trainer: "):
            instantiate(cfg.trainer, "trainer")
        return
    assert instantiate(cfg.trainer, "trainer", logger=False).max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("logger", options("logger"))
def test_logger_options_instantiate(logger, tmp_path):
    cfg = compose_cfg([f"logger={logger}"], tmp_path)
    loggers = instantiate_each(cfg.get("logger"), "logger")
    expected = {"none": 0, "csv": 1, "wandb": 1, "default": 2}[logger]
    assert len(loggers) == expected


@pytest.mark.parametrize("callbacks", options("callbacks"))
def test_callback_options_instantiate(callbacks, tmp_path):
    cfg = compose_cfg([f"callbacks={callbacks}"], tmp_path)
    built = instantiate_each(cfg.get("callbacks"), "callbacks")
    assert len(built) == len(cfg.get("callbacks") or {})


@pytest.mark.parametrize("group", ["debug", "experiment"])
def test_global_options_compose_and_instantiate(group, tmp_path):
    data_dir = mnist_dir() if group == "experiment" else tmp_path
    for option in options(group):
        cfg = compose_cfg([f"{group}={option}", f"paths.data_dir={data_dir}"], tmp_path)
        instantiate(cfg.data, "data")
        instantiate(cfg.model, "model")
        instantiate(cfg.trainer, "trainer", logger=False)


def test_experiment_recipes_set_what_they_say(tmp_path):
    cfg = compose_cfg(["experiment=baseline_lenet5_mnist", f"paths.data_dir={tmp_path}"], tmp_path)
    assert cfg.data._target_.endswith("MNISTDataModule")
    assert cfg.model.net._target_.endswith("LeNet5")
    assert cfg.trainer.max_epochs == 20


def _compose_with_hydra(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_optuna_search_composes():
    cfg = _compose_with_hydra(["hparams_search=optuna"])
    assert cfg.optimized_metric == "val/acc"
    assert "model.optimizer.lr" in cfg.hydra.sweeper.params
    assert hydra.utils.get_class(cfg.hydra.sweeper._target_).__name__ == "OptunaSweeper"


def test_slurm_launcher_composes():
    cfg = _compose_with_hydra(["hydra/launcher=slurm"])
    assert hydra.utils.get_class(cfg.hydra.launcher._target_).__name__ == "SlurmLauncher"
    assert cfg.hydra.launcher.timeout_min > 0


# Techniques whose defaults need more than the default model: layer dropping needs residual blocks
NEEDS = {"layerdrop": ["model=resnet20"]}


@pytest.mark.parametrize("compression", options("compression"))
def test_compression_options_instantiate(compression, tmp_path):
    cfg = compose_cfg([f"compression=[{compression}]", *NEEDS.get(compression, [])], tmp_path)
    assert list(cfg.compression) == [compression]  # nested under its own name
    (technique,) = instantiate_each(cfg.compression, "compression")
    module = instantiate(cfg.model, "model")
    if compression == "distill":  # its teacher is a trained run, which the user names
        with pytest.raises(ValueError, match="teacher is not set"):
            technique.check_model(module.net, module.example_input_array)
        return
    technique.check_model(module.net, module.example_input_array)


def test_compression_default_and_dense(tmp_path):
    assert list(compose_cfg([], tmp_path).compression) == ["gmp", "qat"]  # prune, then quantize
    dense = compose_cfg(["compression=[]"], tmp_path)
    assert dict(dense.compression) == {}
    assert instantiate_each(dense.compression, "compression") == []


def test_paths_follow_lm_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_DATA_DIR", str(tmp_path))
    assert compose_cfg([], tmp_path).paths.data_dir == str(tmp_path)


def test_readme_override_syntax_for_layer_targets(tmp_path):
    cfg = compose_cfg(["compression.gmp.overrides={re\\:.*fc3.*:0.7}", "compression.gmp.scope=layerwise"], tmp_path)
    technique = instantiate(cfg.compression.gmp, "compression.gmp")
    technique.check_model(instantiate(cfg.model, "model").net)
    assert technique.alone_finals == {"fc3.weight": 0.7}
