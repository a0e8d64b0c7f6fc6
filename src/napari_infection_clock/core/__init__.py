"""Qt-free engine: model, checkpoints, stacks, tiles, targets, datasets, training,
prediction and metrics. Nothing under this package imports Qt or napari."""
