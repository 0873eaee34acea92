"""Training recipes as plain ``python -m train`` argument lists, so the demo, the notes and a user all run the same
commands. One demo recipe per CPU capability, chosen by ``demo_recipe()``:

- ``demo-bf16`` (CPUs with native bfloat16: AVX512-BF16 or AMX): ``--amp`` trains in bfloat16, about twice as fast
  as float32 there (the losses, weights and evaluation stay float32). The recipe measured at 11.6 minutes for the
  whole demo on an Intel Xeon with AMX, PQ 57.3 / things 28.9.
- ``demo-fp32`` (every other x86-64 CPU, e.g. AVX2-only EPYCs, where bfloat16 would be emulated and slower): the
  same architecture in float32 with less work: ResNet-18 without DC5 (the dilated last stage is 40% of the FLOPs),
  channels-last layout (1.2x per iteration without DC5), 8 detection epochs instead of 10 and 4 mask-head epochs
  instead of 3. The mask-head stage uses size-grouped batches (``--group_batches``: one orientation and one scale per
  batch, far less padding): its backbone is frozen, BatchNorm statistics included, and on the same stage-1 detector
  it reached PQ 55.3 / things 27.7 in 0.85x the time of detr's batches (55.1 / 27.2). Detection keeps detr's
  batches: grouped, it trained 1.4x faster per epoch but reached only PQ 45.7 / things 11.6, even with
  ``--precise_bn`` (train/precise_bn.py). Measured with AVX2-only kernels on an AMD EPYC.
- ``quick`` is the CI smoke size (tiny widths, 64 px, a few dozen iterations), in bfloat16 where the CPU has it.

Every recipe keeps the decoded dataset in memory in the main process (no worker: on two busy cores a loader process
only competes with the training threads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.cpuinfo import cpu_flags, cpu_model
from runtime.errors import PansegError
from train.amp import cpu_supports_bfloat16


@dataclass(frozen=True)
class Recipe:
    """Stage 1 trains detection; stage 2 trains the mask head on the frozen stage-1 detector."""

    name: str
    precision: str  # what the training computes in: "bfloat16" (--amp) or "float32"
    model: tuple[str, ...]
    stage1: tuple[str, ...]
    stage2: tuple[str, ...]

    def stage1_args(self, data: str, output_dir: str) -> list[str]:
        return [*self.model, *self.stage1, "--coco_path", data, "--output_dir", output_dir]

    def stage2_args(self, data: str, output_dir: str, frozen_weights: str) -> list[str]:
        return [*self.model, *self.stage2, "--masks", "--frozen_weights", frozen_weights,
                "--coco_path", data, "--output_dir", output_dir]


_COMMON = ("--scratch_backbone", "--lr_schedule", "cosine", "--no_crop", "--dropout", "0.0", "--device", "cpu",
           "--num_workers", "0", "--cache_dataset")
_DEMO_MODEL = ("--backbone", "resnet18", "--hidden_dim", "128", "--nheads", "8", "--enc_layers", "2",
               "--dec_layers", "3", "--dim_feedforward", "512", "--num_queries", "15", "--image_size", "128")


def _demo_stage1(epochs: int) -> tuple[str, ...]:
    return ("--token_loss_coef", "1", "--batch_size", "16", "--lr", "4e-4", "--lr_backbone", "4e-4",
            "--epochs", str(epochs), "--eval_every", "0")


def _demo_stage2(epochs: int) -> tuple[str, ...]:
    return ("--mask_attention_gain", "500", "--batch_size", "8", "--lr", "5e-4", "--epochs", str(epochs),
            "--eval_every", "1")


def _quick(amp: bool) -> Recipe:
    return Recipe(
        name="quick", precision="bfloat16" if amp else "float32",
        model=("--backbone", "resnet18", "--dilation", "--hidden_dim", "128", "--nheads", "8", "--enc_layers", "1",
               "--dec_layers", "2", "--dim_feedforward", "256", "--num_queries", "10", "--image_size", "64",
               *_COMMON, *(("--amp",) if amp else ())),
        stage1=("--token_loss_coef", "1", "--batch_size", "8", "--lr", "1e-3", "--lr_backbone", "1e-3",
                "--epochs", "8", "--eval_every", "8"),
        stage2=("--mask_attention_gain", "500", "--batch_size", "8", "--lr", "1e-3", "--epochs", "3",
                "--eval_every", "3"),
    )


DEMO_RECIPES: dict[str, Recipe] = {
    "demo-bf16": Recipe(name="demo-bf16", precision="bfloat16",
                        model=(*_DEMO_MODEL, "--dilation", *_COMMON, "--amp"),
                        stage1=_demo_stage1(10), stage2=_demo_stage2(3)),
    "demo-fp32": Recipe(name="demo-fp32", precision="float32",
                        model=(*_DEMO_MODEL, *_COMMON, "--channels_last"),
                        stage1=_demo_stage1(8), stage2=(*_demo_stage2(4), "--group_batches")),
}


_FEATURES = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "VNNI"), ("avx512_bf16", "AVX512-BF16"),
             ("amx_bf16", "AMX"))


def cpu_features(flags: set[str] | None = None) -> str:
    """E.g. ``AVX2, AVX-512, VNNI, AVX512-BF16; no AMX``: the capabilities the recipes and kernels care about."""
    flags = cpu_flags() if flags is None else flags
    have = [name for flag, name in _FEATURES if flag in flags]
    lack = [name for flag, name in _FEATURES if flag not in flags]
    return ", ".join(have or ["none of AVX2/AVX-512"]) + (f"; no {', no '.join(lack)}" if lack else "")


def demo_recipe(name: str | None = None) -> Recipe:
    """The demo recipe for this CPU (``demo-bf16`` with native bfloat16, else ``demo-fp32``), or the one named."""
    bf16 = cpu_supports_bfloat16()
    if name is None:
        name = "demo-bf16" if bf16 else "demo-fp32"
    if name not in DEMO_RECIPES:
        raise PansegError(f"unknown recipe {name!r}: expected one of {', '.join(DEMO_RECIPES)}")
    if DEMO_RECIPES[name].precision == "bfloat16" and not bf16:
        raise PansegError(f"recipe {name} trains in bfloat16, which this CPU ({cpu_model()}) lacks natively: "
                          "use demo-fp32")
    return DEMO_RECIPES[name]


def quick_recipe() -> Recipe:
    """CI's smoke recipe, in bfloat16 where the CPU has it natively."""
    return _quick(cpu_supports_bfloat16())


def machine(recipe: Recipe | None = None) -> dict[str, str | bool]:
    """Which CPU the demo runs on and which recipe it chose (printed by the demo, kept in its summary)."""
    recipe = recipe or demo_recipe()
    bf16 = cpu_supports_bfloat16()
    if recipe.precision == "bfloat16":
        why = "native bfloat16: --amp trains in bfloat16"
    elif bf16:
        why = "float32 by request (this CPU also has native bfloat16)"
    else:
        why = "no native bfloat16: float32 (bfloat16 would be emulated and slower), with less work"
    # torch's kernel level can be below the CPU's (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA): say which ran
    features = f"{cpu_features()}; torch kernels: {torch.backends.cpu.get_cpu_capability()}"
    return {"cpu": cpu_model(), "features": features, "bfloat16": bf16, "recipe": recipe.name,
            "training_precision": recipe.precision, "note": why}
