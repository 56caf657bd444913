"""The CLIP family: OpenCLIP's image encoders ViT-B/32, ViT-B/16 and ViT-L/14 with OpenAI's weights.

Reads weights through OpenCLIP, from the Hugging Face hub's cache (downloading them when online); writes
nothing. A feature is the image embedding CLIP is known by: what OpenCLIP's `encode_image` returns, the
class token projected into the space shared with text, not normalised (`normalize=False`, its default).
OpenCLIP is imported when a CLIP backbone is built, not with the table (the import takes about 2 s).
The table's resize, crop, mean and std are those of OpenCLIP's `openai` configurations (a test compares).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from torch import nn

from .spec import BackboneSpec, Preprocess, WeightsError
from .weights import file_weights

TAG = "openai"  # the weights: OpenAI's, as CLIP4Caption and most captioning work use
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_PREPROCESS = Preprocess(224, 224, OPENAI_MEAN, OPENAI_STD, "bicubic")
LAYER = "image embedding (encode_image: the projected class token, not normalised)"


def _build(architecture: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import open_clip

        logger = logging.getLogger()
        level = logger.level
        logger.setLevel(logging.ERROR)  # OpenCLIP warns that a model without weights is random: it is meant so
        try:
            # OpenAI's weights were trained with QuickGELU, which the architecture's plain config does not use
            return open_clip.create_model(architecture, pretrained=None, force_quick_gelu=True)
        finally:
            logger.setLevel(level)
    return build


def _image_encoder(model: nn.Module) -> nn.Module:
    """The visual tower alone: `encode_image(x)` is `model.visual(x)` (the text tower is dropped)."""
    return model.visual


def _pretrained(architecture: str) -> Callable[[], tuple[dict, str]]:
    def load() -> tuple[dict, str]:
        import open_clip

        config = open_clip.get_pretrained_cfg(architecture, TAG)
        hub_log = logging.getLogger("huggingface_hub")
        level = hub_log.level
        hub_log.setLevel(logging.ERROR)  # offline, the hub logs every retry (twice), for about a minute
        try:
            path = open_clip.download_pretrained(config)
        except Exception as exc:  # huggingface_hub and urllib raise many types when offline
            repo = config["hf_hub"].rstrip("/")
            raise WeightsError(
                f"CLIP weights {architecture} ({TAG}) are not in the Hugging Face cache and could not be "
                f"downloaded ({type(exc).__name__}: {str(exc).strip().splitlines()[0]}).\n  Either download "
                f"https://huggingface.co/{repo}/resolve/main/open_clip_model.safetensors\n  on a machine with a "
                f"network and pass WEIGHTS=/path/to/open_clip_model.safetensors, or run once online (the file "
                f"is kept in the Hugging Face cache, ~/.cache/huggingface/hub). Offline, HF_HUB_OFFLINE=1 "
                f"skips the minute of retries before this message."
            ) from None
        finally:
            hub_log.setLevel(level)
        state, _ = file_weights(Path(path))
        return state, f"open_clip:{architecture}:{TAG}"
    return load


def _clip(name: str, architecture: str, dim: int) -> BackboneSpec:
    # On a CPU, bf16 autocast ran ViT-B/32 4.5x slower than fp32 (6.8 against 30 frames/s on a 2-core Xeon with
    # AMX): the attention's input projection multiplies a transposed activation, and PyTorch's CPU matmul then
    # copies the expanded weight for every token. PRECISION=auto keeps CLIP at fp32 on a CPU.
    return BackboneSpec(name, LAYER, dim, _build(architecture), _image_encoder, _pretrained(architecture),
                        CLIP_PREPROCESS, cpu_bf16=False)


MODELS = {"clip_vitb32": ("ViT-B-32", 512), "clip_vitb16": ("ViT-B-16", 512),
          "clip_vitl14": ("ViT-L-14", 768)}  # name: (OpenCLIP's architecture, embedding size)
SPECS: dict[str, BackboneSpec] = {name: _clip(name, arch, dim) for name, (arch, dim) in MODELS.items()}
