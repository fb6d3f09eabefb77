"""What a compressed network measures as: bytes of real files, MACs counted by running it, latency medians
(:mod:`~lightning_micro.report.measure`), and pictures of its layers (:mod:`~lightning_micro.report.pictures`)."""
