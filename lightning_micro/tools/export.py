"""``lightning-micro-export``: the ONNX model of a run's artifact, from the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lightning_micro.artifact.onnx import FORMATS, OPSET, OnnxExportError, export_onnx, integer_kernels


def main(argv: Sequence[str] | None = None) -> int:
    """``lightning-micro-export <run dir or artifact> --format onnx``."""
    parser = argparse.ArgumentParser(
        prog="lightning-micro-export",
        description="Write the ONNX model of a run's artifact (or of an artifact file); run it with ONNX Runtime.")
    parser.add_argument("source", help="a finished run's directory (logs/runs/<time>) or a model.safetensors file")
    parser.add_argument("--format", default="onnx", help=f"output format: {' | '.join(FORMATS)} (default: onnx)")
    parser.add_argument("--output", "-o", help="the file to write (default: model.onnx beside the artifact)")
    parser.add_argument("--input-shape", help="C,H,W of one image (default: the artifact's recorded input_shape)")
    parser.add_argument("--trust", action="append", default=[],
                        help="a class path or module the artifact may name beyond the zoo (repeatable)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default: {OPSET})")
    args = parser.parse_args(argv)
    try:
        shape = None
        if args.input_shape:
            try:
                shape = [int(v) for v in args.input_shape.split(",")]
            except ValueError:
                raise OnnxExportError(f"--input-shape must be C,H,W integers, got {args.input_shape!r}") from None
        path = export_onnx(args.source, args.output, fmt=args.format, input_shape=shape, trusted=args.trust,
                           opset=args.opset)
    except (OnnxExportError, FileExistsError) as err:
        print(f"lightning-micro-export: {err}", file=sys.stderr)
        return 2
    kernels = integer_kernels(path)
    note = f"; ONNX Runtime runs it with integer kernels ({', '.join(kernels)})" if kernels else ""
    print(f"Wrote {path} ({path.stat().st_size:,} bytes, dynamic batch){note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
