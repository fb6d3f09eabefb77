"""Why the int8 backend is torch.ao FX: LeNet-5 at batch 64, one thread, both flows on the same float network.

    pip install --target /tmp/tao torchao --no-deps   # torchao is not a dependency; only this script needs it
    PYTHONPATH=/tmp/tao python bench/qat_backend.py

Writes bench/results/qat_backend.json: speedup over fp32 of the torch.ao FX converted network (what
lightning_micro.core.int8_backend produces) and of torchao's PT2E converted network run eagerly, and the bytes of
each converted network's state dict.
"""

from __future__ import annotations

import copy
import json
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def state_bytes(net: torch.nn.Module) -> int:
    total = 0
    for value in net.state_dict().values():
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if isinstance(item, torch.Tensor):
                total += item.numel() * item.element_size()
    return total


def main() -> None:
    warnings.filterwarnings("ignore")
    try:
        import torchao
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError:
        sys.exit("needs torchao: pip install --target /tmp/tao torchao --no-deps; PYTHONPATH=/tmp/tao python ...")
    from lightning_micro.core import int8_backend
    from lightning_micro.models import LeNet5
    from lightning_micro.report import measure_latency_ms

    torch.manual_seed(0)
    net = LeNet5([1, 28, 28]).train()
    x = torch.randn(64, 1, 28, 28)
    fx = int8_backend.prepare_qat(copy.deepcopy(net), [1, 28, 28])
    fx(x)
    fx = int8_backend.convert(fx)
    exported = torch.export.export(copy.deepcopy(net), (x,)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=True))
    prepared = prepare_qat_pt2e(exported, quantizer)
    prepared(x)
    pt2e = convert_pt2e(prepared)
    move_exported_model_to_eval(pt2e)

    class Eager(torch.nn.Module):  # an exported program refuses .eval(); the timer calls it
        def __init__(self, program) -> None:
            super().__init__()
            self.program = [program]

        def forward(self, inputs):
            return self.program[0](inputs)

    ms = measure_latency_ms({"fp32": net.eval(), "torch_ao_fx": fx, "torchao_pt2e_eager": Eager(pt2e)},
                            [1, 28, 28], 64, num_threads=1, min_run_time=0.5, rounds=5)
    result = {
        "benchmark": "int8 backends on LeNet-5, batch 64, 1 thread, interleaved medians",
        "torch": torch.__version__, "torchao": torchao.__version__, "ms_b64": ms,
        "speedup_vs_fp32": {k: ms["fp32"] / v for k, v in ms.items()},
        "state_bytes": {"fp32": state_bytes(net), "torch_ao_fx": state_bytes(fx),
                        "torchao_pt2e": state_bytes(pt2e)},
        "date": time.strftime("%Y-%m-%d"),
    }
    out = ROOT / "bench" / "results" / "qat_backend.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
