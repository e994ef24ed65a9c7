"""What a GPU changes: mixed precision, XLA and a larger batch, on by default only where they pay off.

`resolve` is the whole policy, pure so that it can be tested without a GPU; `probe_gpus` asks TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Toggle = Literal["auto", "on", "off"]
TOGGLES: tuple[Toggle, ...] = ("auto", "on", "off")
AUTO: Literal["auto"] = "auto"
# The batch size of the keras-io example, and what a 2-core CPU trains fastest with.
CPU_BATCH_SIZE = 128
# MNIST's small convnet is launch-bound on a GPU: at 128 images a step the GPU waits on kernel launches and
# the input pipeline more than it computes. More work per step keeps it busy (and float16 halves the memory).
GPU_BATCH_SIZE = 512
# Tensor cores, which make float16 matmuls and convolutions fast, start with Volta (7.0); on older GPUs
# mixed_float16 only adds casts.
MIXED_PRECISION_MIN_CAPABILITY = (7, 0)


@dataclass(frozen=True)
class Acceleration:
    """Resolved settings of one run; `warning` says why an explicit choice will likely be slower."""

    mixed_precision: bool
    xla: bool
    batch_size: int
    warning: str | None = field(default=None, compare=False)
    deterministic: bool = False

    def params(self) -> dict[str, str | int]:
        """The run params: what the run actually used, not what was asked for."""
        return {
            "mixed_precision": "on" if self.mixed_precision else "off",
            "xla": "on" if self.xla else "off",
            "batch_size": self.batch_size,
        }


def resolve(
    gpu_count: int,
    mixed_precision: Toggle = AUTO,
    xla: Toggle = AUTO,
    batch_size: int | Literal["auto"] = AUTO,
    capability: tuple[int, int] | None = None,
    deterministic: Toggle = "off",
) -> Acceleration:
    """Explicit values win; `auto` turns each on only with a GPU, except determinism: `auto` is on without one.

    Op determinism costs little on a CPU (bench/determinism.py) and buys runs that repeat bit for bit. With a
    GPU it would cost XLA too (Keras turns jit_compile off under op determinism, since XLA does not honour it)
    plus the deterministic cuDNN kernels, so `auto` leaves it off there and `on` asks for it explicitly.

    `capability` is the compute capability of the GPU the model runs on (Keras without a distribution
    strategy uses the first one), None when TensorFlow cannot tell: then a GPU is assumed to be recent enough.
    """
    gpu = gpu_count > 0
    modern_gpu = gpu and (capability is None or capability >= MIXED_PRECISION_MIN_CAPABILITY)
    use_mixed = modern_gpu if mixed_precision == AUTO else mixed_precision == "on"
    # Keras' own jit_compile="auto" decides the same for the TF backend; explicit here so that runs record it.
    use_xla = gpu if xla == AUTO else xla == "on"
    use_determinism = not gpu if deterministic == AUTO else deterministic == "on"
    size = (GPU_BATCH_SIZE if gpu else CPU_BATCH_SIZE) if batch_size == AUTO else batch_size
    warning = None
    if use_determinism and use_xla:
        use_xla = False
        if xla == "on":
            warning = "--xla on is ignored under op determinism (Keras compiles no XLA then); pass --deterministic off"
    if warning is None and not gpu and (use_mixed or use_xla):
        forced = " and ".join(f"--{name} on" for name, on in (("mixed-precision", use_mixed), ("xla", use_xla)) if on)
        warning = f"{forced} without a GPU: expect slower training on the CPU"
    elif warning is None and use_mixed and not modern_gpu and capability is not None:
        major, minor = capability
        warning = f"--mixed-precision on with a GPU of compute capability {major}.{minor} (below 7.0): expect it slower"
    return Acceleration(use_mixed, use_xla, size, warning, use_determinism)


def probe_gpus() -> tuple[int, tuple[int, int] | None]:
    """How many GPUs TensorFlow sees, and the first one's compute capability when it is readable."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return 0, None
    reported = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
    capability = (int(reported[0]), int(reported[1])) if reported else None
    return len(gpus), capability
