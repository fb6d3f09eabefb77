"""Train, compress, test, export and measure one network: ``python train.py [overrides]``.

Examples:
    python train.py                                   # digits, LeNet-300-100, the default recipe
    LM_DATA_DIR=../shared/data python train.py data=mnist model=lenet5 trainer.max_epochs=20
    python train.py -m model.optimizer.lr=0.01,0.05   # a sweep, one run directory per value

A config or file error prints one line (``Error: <key>: ...``) and exits with status 2 before any training step;
``HYDRA_FULL_ERROR=1`` shows the traceback instead (see lightning_micro.run.failures for every exit status).
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lightning_micro.run.failures import reported
from lightning_micro.run.preflight import check_group_overrides
from lightning_micro.run.quiet_output import log_into_run_file, quiet_third_party
from lightning_micro.run.training import optimized_value, train

CONFIG_DIR = Path(__file__).resolve().parent / "conf"


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    log_into_run_file()
    with reported():
        metrics = train(cfg)
        # Sweepers (Optuna) minimize or maximize what this returns.
        return optimized_value(metrics, cfg.get("optimized_metric"))


def cli() -> None:
    """The command line: group choices Hydra would answer with a traceback are checked first, then the run."""
    quiet_third_party(sys.argv[1:])
    with reported():
        check_group_overrides(sys.argv[1:], CONFIG_DIR)
    main()


if __name__ == "__main__":
    cli()
