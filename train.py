"""Train, compress, test, export and measure one network: ``python train.py [overrides]``.

Examples:
    python train.py                                   # digits, LeNet-300-100, the default recipe
    LM_DATA_DIR=../shared/data python train.py data=mnist model=lenet5 trainer.max_epochs=20
    python train.py -m model.optimizer.lr=0.01,0.05   # a sweep, one run directory per value
"""

import hydra
from omegaconf import DictConfig

from lightning_micro.run import optimized_value, train


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # Sweepers (Optuna) minimize or maximize what this returns.
    return optimized_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
