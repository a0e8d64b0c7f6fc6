"""The names a user picks a backbone, its initialisation and a precision by, and the batch
sizes offered first.

Plain data, without torch: the command line's parser offers them (``choices``, ``--help``)
before any command runs, and importing torch would cost its ``--help`` seconds; the docks
show them before torch is loaded (``ui.torch_ahead``).
"""

ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
INIT_CHOICES = ("imagenet", "random")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STARTS = ("session model", "imagenet", "random")  # what retraining starts from
#: Default batch per device type. ResNet50 at 512 px on CPU runs as fast at 4 as at 8
#: and faster than at 16, with a quarter of the activation memory (docs/benchmarks.md).
DEFAULT_BATCH_SIZE = {"cpu": 4}
GPU_BATCH_SIZE = 16


def default_batch_size(device_type: str) -> int:
    """Batch 4 is as fast as 8 on a CPU and smaller; accelerators want bigger batches."""
    return DEFAULT_BATCH_SIZE.get(device_type, GPU_BATCH_SIZE)
