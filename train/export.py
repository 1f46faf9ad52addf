"""Export a training checkpoint's EMA generator as the shipped model folder.

``python -m train.export --checkpoint runs/fast/checkpoints/step_X --out icface_video/weights``

Writes ``generator.safetensors`` (fp16 by default), ``config.json`` (``{"format": 1,
"generator": GeneratorConfig, "source_checkpoint", "step", "wall_s", "dtype", "au_scale"
(the AU scale it was trained on), ...}``) and,
``MODEL_CARD.md`` (data, command, steps, wall time, hardware, and the evaluation table
given with ``--eval-markdown``, as written by ``python -m train.evaluate --markdown``).
Only generator weights ship (no discriminator, no optimiser state).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import torch
from safetensors.torch import save_file

from icface_video.model import (CHECKPOINT_WEIGHTS_NAME, CONFIG_NAME, EMA_PREFIX, WEIGHTS_NAME, ReenactmentModel,
                                model_au_scale)
from icface_video.networks import GeneratorConfig
from train.checkpoint import CheckpointError, read_state, read_tensors

MAX_BYTES = 30 * 1024 * 1024

CARD_TEMPLATE = """# ICface default model ({design}, {resolution} px)

- Architecture: `{design}` generator (see icface_video/networks.py and train/README.md),
  {params:,} parameters, weights stored as {dtype}.
- Training data: the `train` split of the prepared dataset `{data}`.
- Command: `python -m train.fit --config {config}`{start} ({step} steps, {wall_h:.2f} h of
  optimiser wall time in all).
- Hardware: {hardware}.
{eyelids}
## Evaluation

The table is `python -m train.evaluate --markdown` output (protocol in train/README.md).

{evaluation}
"""


def export_generator(state: dict[str, torch.Tensor], config: GeneratorConfig, out: Path,
                     meta: dict[str, Any], dtype: torch.dtype = torch.float16) -> Path:
    """Write ``state`` (generator state_dict) and its config to ``out``; returns the weights path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    path = out / WEIGHTS_NAME
    save_file(tensors, str(path))
    doc = {"format": 1, "generator": config.to_dict(), "dtype": str(dtype).replace("torch.", ""), **meta}
    (out / CONFIG_NAME).write_text(json.dumps(doc, indent=1))
    if path.stat().st_size > MAX_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size} bytes, over the 30 MB budget")
    return path


def _eyelids_line(folder: Path) -> str:
    """The model card's line on the folder's eyelid warp ("" when it has none)."""
    from icface_video.eyelids import load_for_model

    lids = load_for_model(folder)
    if lids is None:
        return ""
    return (f"- Eyelid warp: `eyelids.json` (gain {lids.gain}, fitted on the `{lids.provenance.get('split', '?')}` "
            "split by `python -m train.fit_eyelids`; train/README.md, \"Closed eyes IV\"). The evaluation "
            "renders with it.\n")


@click.command()
@click.option("--checkpoint", required=True, type=click.Path(file_okay=False), help="Checkpoint folder.")
@click.option("--out", default="icface_video/weights", show_default=True, help="Model folder to write.")
@click.option("--fp32", is_flag=True, help="Keep float32 weights (default fp16).")
@click.option("--hardware", required=True, help="What it was trained on, e.g. '2-core x86_64 CPU, no GPU'.")
@click.option("--eval-markdown", required=True, type=click.Path(dir_okay=False, exists=True),
              help="The evaluation table from `python -m train.evaluate --markdown`.")
@click.option("--recipe", default=None, type=click.Path(dir_okay=False, exists=True),
              help="The training config the run used, for the model card (default: the design's "
                   "train/configs/fast.toml or paper.toml).")
def main(checkpoint: str, out: str, fp32: bool, hardware: str, eval_markdown: str, recipe: str | None) -> None:
    """Export the EMA generator of a training checkpoint."""
    ckpt = Path(checkpoint)
    try:
        state = read_state(ckpt)
        tensors = read_tensors(ckpt / CHECKPOINT_WEIGHTS_NAME)
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from exc
    cfg = GeneratorConfig.from_dict(state["config"]["model"])
    gen = {k[len(EMA_PREFIX) + 1:]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX + ".")}
    dtype = torch.float32 if fp32 else torch.float16
    meta = {"source_checkpoint": str(ckpt), "step": state["step"], "wall_s": state.get("wall_s"),
            "au_scale": model_au_scale(state), "train_config": state["config"]}
    path = export_generator(gen, cfg, Path(out), meta, dtype)
    model = ReenactmentModel.load(out)  # round-trip check
    card = Path(out) / "MODEL_CARD.md"
    card.write_text(CARD_TEMPLATE.format(
        design=cfg.design, resolution=cfg.resolution, dtype=str(dtype).replace("torch.", ""),
        params=sum(p.numel() for p in model.generator.parameters()), data=state["config"]["data"]["root"],
        config=recipe or ("train/configs/fast.toml" if cfg.design == "fast" else "train/configs/paper.toml"),
        start=(f", started from `{state['config']['run']['init_from']}` (`run.init_from`)"
               if state["config"].get("run", {}).get("init_from") else ""),
        step=state["step"], wall_h=(state.get("wall_s") or 0) / 3600, hardware=hardware,
        eyelids=_eyelids_line(Path(out)), evaluation=Path(eval_markdown).read_text().strip()))
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), {out}/{CONFIG_NAME}")


if __name__ == "__main__":
    main()
