"""``demo``: the whole loop on synthetic data on a CPU in a few minutes."""

from __future__ import annotations

import time
from pathlib import Path

from ..core.checkpoint import CheckpointMeta
from ..core.items import FramePolicy, research_items, split_by_group
from ..core.model import ModelConfig, build_model
from ..core.preprocess import Preprocessing
from ..core.synthetic import write_research_dataset
from ..core.trainer import TrainConfig
from .options import DemoOptions, PredictOptions
from .predict import predict
from .train import train_and_report


def demo(opts: DemoOptions) -> int:
    start = time.perf_counter()
    out = opts.out
    data = out / "data"
    print(f"1/4 generating synthetic infected and mock stacks in {data}")
    write_research_dataset(data, seed=opts.seed)
    policy = FramePolicy()
    items = research_items(data, policy)
    train, val, test = split_by_group(items, 0.2, 0.2, opts.seed)
    config = ModelConfig(opts.arch)
    model = build_model(config, init="random")
    meta = CheckpointMeta(
        model=config,
        preprocessing=Preprocessing(image_size=opts.image_size),
        time=policy.time_policy(),
    )
    print("2/4 training (random init: ImageNet weights are not needed for the demo)")
    # From scratch the classifier saturates early, so the combined loss picks the epoch.
    train_cfg = TrainConfig(
        epochs=opts.epochs,
        batch_size=32,
        lr=1e-3,
        best_metric="loss",
        seed=opts.seed,
        device=opts.device,
    )
    train_and_report(model, meta, train_cfg, train, val, test, out / "training")
    print("3/4 evaluating on the held-out wells: see above and", out / "training" / "report")
    example = Path(test[0].stack) if test else Path(train[0].stack)
    predictions = out / "predictions.csv"
    print(f"4/4 predicting {example.name}")
    predict(PredictOptions(checkpoint=out / "training" / "model.pt", stacks=[example],
                           out=predictions, maps=out / "maps", device=opts.device))
    print(f"\ndone in {time.perf_counter() - start:.0f} s. Results in {out}:")
    print(f"  checkpoint       {out / 'training' / 'model.pt'}")
    print(f"  metrics, plots   {out / 'training' / 'report'}")
    print(f"  predictions      {predictions}")
    print(f"  maps             {out / 'maps'}")
    return 0
