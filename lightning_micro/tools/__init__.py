"""The console commands: ``lightning-micro-export`` (:mod:`~lightning_micro.tools.export`),
``lightning-micro-sensitivity`` (:mod:`~lightning_micro.tools.sensitivity`) and ``lightning-micro-pareto``
(:mod:`~lightning_micro.tools.pareto`). Each error is one line and exit status 2."""
