"""Pure torch: schedules, parameter selection, masks. Nothing here imports Lightning or Hydra."""
