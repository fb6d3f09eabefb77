"""Lightning's loggers, where they need a word changed for the libraries this project pins."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import loggers


class WandbLogger(loggers.WandbLogger):
    """Lightning's ``WandbLogger`` that leaves out ``anonymous`` when it is not set.

    Lightning always passes ``anonymous=None`` to ``wandb.init``; wandb 0.31 deprecates the setting and warns on
    every run whenever the key is there, even unset. Everything else is Lightning's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
