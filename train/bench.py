"""Time the per-frame generator: ``python -m train.bench [--model DIR] [--threads 2] [--batch 8]``.

Prepares one random source, then times :meth:`ReenactmentModel.render` on batches of
random driving attributes; prints the median and best milliseconds per frame. Run it on
an otherwise idle machine: other processes on 2 cores inflate the numbers several-fold.
"""

from __future__ import annotations

import time

import click
import torch

from icface_video.model import ReenactmentModel
from icface_video.networks import Generator, named_config
from icface_video.runtime import tune_allocator


@click.command()
@click.option("--model", "model_path", default=None, help="Model/checkpoint folder (default: untrained fast).")
@click.option("--config", "config_name", default="fast", show_default=True, help="Named config when no --model.")
@click.option("--resolution", default=128, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--batch", default=8, show_default=True)
@click.option("--repeats", default=10, show_default=True)
def main(model_path: str | None, config_name: str, resolution: int, threads: int, batch: int, repeats: int) -> None:
    """Print generator milliseconds per frame."""
    tune_allocator()  # as the command line does
    torch.set_num_threads(threads)
    if model_path:
        model = ReenactmentModel.load(model_path)
    else:
        model = ReenactmentModel(Generator(named_config(config_name, resolution=resolution)))
    r = model.resolution
    cache = model.prepare_source(torch.rand(1, 3, r, r) * 2 - 1, torch.zeros(1, 20))
    attrs = torch.rand(batch, 20)
    for _ in range(2):
        model.render(cache, attrs)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.render(cache, attrs)
        times.append((time.perf_counter() - t) / batch * 1000)
    times.sort()
    click.echo(f"{model.config.design} {r}px threads={threads} batch={batch}: "
               f"median {times[len(times) // 2]:.1f} ms/frame, best {times[0]:.1f} ms/frame")


if __name__ == "__main__":
    main()
