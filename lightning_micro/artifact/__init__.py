"""The artifact layer: the file format (:mod:`~lightning_micro.artifact.format`), what a file may build
(:mod:`~lightning_micro.artifact.trust`) and ONNX (:mod:`~lightning_micro.artifact.onnx`).

It imports torch, safetensors and the zoo, never Lightning, Hydra or the callbacks: a deployed network loads
without the training stack.
"""
