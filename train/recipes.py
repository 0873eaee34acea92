"""Training recipes as plain ``python -m train`` argument lists, so the demo, the notes and a user all run the same
commands.

``demo`` is the synthetic-data recipe for this 2-core CPU (both stages within the training issue's 12-minute
budget); ``quick`` is the CI smoke size of the same recipe (tiny widths, 64 px, a few dozen iterations).

Both train with ``--amp`` where the CPU has native bfloat16 (AVX512-BF16/AMX: about twice as fast here; the losses,
weights and evaluation stay float32) and keep the decoded dataset in memory in the main process (no worker: on two
busy cores a loader process only competes with the training threads).
"""

from __future__ import annotations

from dataclasses import dataclass

from train.amp import cpu_supports_bfloat16


@dataclass(frozen=True)
class Recipe:
    """Stage 1 trains detection; stage 2 trains the mask head on the frozen stage-1 detector."""

    model: tuple[str, ...]
    stage1: tuple[str, ...]
    stage2: tuple[str, ...]

    def stage1_args(self, data: str, output_dir: str) -> list[str]:
        return [*self.model, *self.stage1, "--coco_path", data, "--output_dir", output_dir]

    def stage2_args(self, data: str, output_dir: str, frozen_weights: str) -> list[str]:
        return [*self.model, *self.stage2, "--masks", "--frozen_weights", frozen_weights,
                "--coco_path", data, "--output_dir", output_dir]


_AMP = ("--amp",) if cpu_supports_bfloat16() else ()
TRAINING_PRECISION = "bfloat16" if _AMP else "float32"


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (what every quoted time must be read against)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine() -> dict[str, str | bool]:
    """Which CPU the recipes run on and what they chose for it (printed by the demo, kept in its summary)."""
    bf16 = bool(_AMP)
    why = ("the CPU has native bfloat16: --amp trains in bfloat16" if bf16 else
           "no native bfloat16 on this CPU: training in float32 (bfloat16 would be emulated and slower)")
    return {"cpu": cpu_model(), "bfloat16": bf16, "training_precision": TRAINING_PRECISION, "note": why}
_COMMON = ("--scratch_backbone", "--lr_schedule", "cosine", "--no_crop", "--dropout", "0.0", "--device", "cpu",
           "--num_workers", "0", "--cache_dataset", *_AMP)

RECIPES: dict[str, Recipe] = {
    "demo": Recipe(
        model=("--backbone", "resnet18", "--dilation", "--hidden_dim", "128", "--nheads", "8", "--enc_layers", "2",
               "--dec_layers", "3", "--dim_feedforward", "512", "--num_queries", "15", "--image_size", "128",
               *_COMMON),
        stage1=("--token_loss_coef", "1", "--batch_size", "16", "--lr", "4e-4", "--lr_backbone", "4e-4",
                "--epochs", "10", "--eval_every", "0"),
        stage2=("--mask_attention_gain", "500", "--batch_size", "8", "--lr", "5e-4", "--epochs", "3",
                "--eval_every", "1"),
    ),
    "quick": Recipe(
        model=("--backbone", "resnet18", "--dilation", "--hidden_dim", "128", "--nheads", "8", "--enc_layers", "1",
               "--dec_layers", "2", "--dim_feedforward", "256", "--num_queries", "10", "--image_size", "64",
               *_COMMON),
        stage1=("--token_loss_coef", "1", "--batch_size", "8", "--lr", "1e-3", "--lr_backbone", "1e-3",
                "--epochs", "8", "--eval_every", "8"),
        stage2=("--mask_attention_gain", "500", "--batch_size", "8", "--lr", "1e-3", "--epochs", "3",
                "--eval_every", "3"),
    ),
}
