"""The names a user picks a backbone, its initialisation and a precision by.

Plain data, without torch: the command line's parser offers them (``choices``, ``--help``)
before any command runs, and importing torch would cost its ``--help`` seconds.
"""

ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
INIT_CHOICES = ("imagenet", "random")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
