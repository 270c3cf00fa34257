"""Attribute heads: a small crop classifier with one softmax head per attribute group.

Input is what ``fashionbox.core.imaging.crop_garments`` makes: uint8 [B, C, C, 3] RGB crops of
detected garments. ``forward`` returns the per-group logits (a dict keyed by group index) and
``probabilities`` concatenates the per-group softmaxes in label-map order, which is the
served output (``ATTRIBUTE_PROBS``)::

    model = AttributeClassifier(AttributeConfig(group_sizes=(5, 5, 5)))
    probs = model(crops)                 # [B, 15]

With ``mask_size > 0`` the classifier also carries a mask head (:class:`MaskHead`): a small
decoder on the trunk's spatial features, Mask R-CNN style, that predicts for each crop the
garment's mask probability on an ``m x m`` grid covering exactly the crop's region
(``fashionbox.core.imaging.crop_regions``), class-agnostic::

    model = AttributeClassifier(AttributeConfig(group_sizes=(5, 5, 5), mask_size=48))
    probs, masks = model.predict(crops)  # [B, 15], [B, 48, 48] after a sigmoid

The head reads the trunk and changes nothing in it, so ``probs`` are the same with or without
it; a checkpoint written before the head existed (no ``mask_size`` in its config) loads as a
classifier without one.

Two more heads read the same frozen trunk through one *descriptor* (:meth:`AttributeClassifier.descriptor`:
average- and max-pooled maps of every stage and of the embedding conv): with ``retrieval_dim > 0``
an :class:`EmbeddingHead` gives each crop an L2-normalised garment embedding for visual search,
and with ``verticals`` a :class:`VerticalHead` gives a softmax over product verticals (fed the
whole photo as one crop). :meth:`AttributeClassifier.outputs` returns every output the
classifier has, keyed by its ONNX name, from one pass over the trunk::

    model = AttributeClassifier(AttributeConfig(group_sizes=(5, 5), retrieval_dim=128,
                                                verticals=("tops", "bottoms")))
    out = model.outputs(crops)   # {"probs": [B, 10], "embeddings": [B, 128], "verticals": [B, 2]}

With ``verifier_classes > 0`` a :class:`VerifierHead` on the same descriptor is the pipeline's second
stage: for each crop, one logit offset per detector category, never above 0, that ``postprocess``
adds to the detection's (calibrated) score logit, ``sigmoid(logit(score) + offset[category])``,
dropping what then falls below the served threshold
(:func:`fashionbox.core.postprocessing.rescore_detections`). It can only lower a score: the crop,
seen at the attribute heads' resolution by a trunk trained on garments, vetoes what the detector's
small receptive field took for one (a striped rug read as pants). ``fashionbox train --stage
verifier`` fits it, for one detector, on that detector's own detections::

    model = AttributeClassifier(AttributeConfig(group_sizes=(5, 5), verifier_classes=13))
    model.outputs(crops)["score_offsets"]   # [B, 13], <= 0
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fashionbox import contract
from fashionbox.models.detector import PIXEL_MEAN, PIXEL_STD, InvertedResidual, _conv_bn

__all__ = ["AttributeClassifier", "AttributeConfig", "EmbeddingHead", "MaskHead", "VerifierHead", "VerticalHead"]

# Output names of AttributeClassifier.outputs: the attribute graph's ONNX output names, from the contract.
OUTPUT_PROBS = contract.ONNX_ATTRIBUTES_OUTPUT
OUTPUT_MASKS = contract.ONNX_ATTRIBUTES_MASKS
OUTPUT_EMBEDDINGS = contract.ONNX_ATTRIBUTES_EMBEDDINGS
OUTPUT_VERTICALS = contract.ONNX_ATTRIBUTES_VERTICALS
OUTPUT_SCORE_OFFSETS = contract.ONNX_ATTRIBUTES_SCORE_OFFSETS


@dataclass(frozen=True)
class AttributeConfig:
    group_sizes: tuple[int, ...]
    crop_size: int = 96
    stem_channels: int = 24
    stages: tuple[tuple[int, int, int, int], ...] = (
        (1, 24, 1, 1),
        (4, 32, 2, 2),
        (4, 64, 2, 2),
        (4, 96, 2, 2),
    )
    embedding: int = 192
    dropout: float = 0.1
    mask_size: int = 0
    """Side of the mask head's square grid; 0: no mask head (checkpoints from before it)."""
    mask_channels: tuple[int, int, int, int] = (64, 64, 48, 24)
    """Decoder width at the trunk's last four stages' strides (16, 8, 4 and 2 of the crop here)."""
    retrieval_dim: int = 0
    """Width of the garment embedding (visual search); 0: no embedding head. Not ``embedding``,
    which is the trunk's width."""
    verticals: tuple[str, ...] = ()
    """Product vertical names, in the vertical head's output order; empty: no vertical head."""
    head_hidden: int = 512
    """Hidden width of the embedding and vertical heads' MLPs."""
    verifier_classes: int = 0
    """Detector categories the verifier head scores (the label map's); 0: no verifier head."""
    verifier_hidden: int = 64
    """Hidden width of the verifier head's MLP."""
    verifier_detector: str = ""
    """sha256 of the detector checkpoint the verifier was fitted to (its offsets correct that detector's
    scores): ``fashionbox convert`` serves the verifier with that detector only."""

    def __post_init__(self) -> None:
        if not self.group_sizes or min(self.group_sizes) < 2:
            raise ValueError("every attribute group needs at least two labels")
        if self.mask_size < 0:
            raise ValueError(f"mask_size must be 0 (no mask head) or positive, got {self.mask_size}")
        if self.mask_size and len(self.stages) < 4:
            raise ValueError("the mask head needs a trunk of at least four stages")
        if self.mask_size and self.crop_size % 16:
            raise ValueError(f"the mask head needs crop_size divisible by 16, got {self.crop_size}")
        if self.retrieval_dim < 0:
            raise ValueError(f"retrieval_dim must be 0 (no embedding head) or positive, got {self.retrieval_dim}")
        if self.verticals and (len(self.verticals) < 2 or len(set(self.verticals)) != len(self.verticals)):
            raise ValueError(f"verticals must be empty or at least two distinct names, got {self.verticals}")
        if self.head_hidden < 1:
            raise ValueError(f"head_hidden must be positive, got {self.head_hidden}")
        if self.verifier_classes < 0 or self.verifier_hidden < 1:
            raise ValueError(f"verifier_classes must be >= 0 and verifier_hidden positive, got "
                             f"{self.verifier_classes} and {self.verifier_hidden}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AttributeConfig:
        data = json.loads(text)
        data["group_sizes"] = tuple(data["group_sizes"])
        data["stages"] = tuple(tuple(s) for s in data["stages"])
        if "mask_channels" in data:
            data["mask_channels"] = tuple(data["mask_channels"])
        if "verticals" in data:
            data["verticals"] = tuple(data["verticals"])
        return cls(**data)


def _conv(cin: int, cout: int, kernel: int = 1, groups: int = 1) -> nn.Sequential:
    # No BatchNorm in the decoder: it is trained alone on a frozen trunk, and on the CPU batch
    # statistics at the fine levels cost more than the convolutions.
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, 1, kernel // 2, groups=groups), nn.ReLU(inplace=True))


def _separable(cin: int, cout: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise: the decoder's block, cheap at the fine levels."""
    return nn.Sequential(_conv(cin, cin, 3, groups=cin), _conv(cin, cout))


class MaskHead(nn.Module):
    """Decoder from the trunk's deepest map up to stride 2, with a skip at each stride (U-Net-like).

    Inputs: the embedding conv's map and the last block of the last stage (deepest, stride 16 of
    a 96-px crop), of the two stages before it (strides 8 and 4), of the first stage (stride 2),
    and the normalised crop, whose 2x2 average joins at stride 2 so the boundary can follow the
    pixels. Returns logits ``[B, mask_size, mask_size]`` (resized when ``mask_size`` is not the
    stride-2 grid).
    """

    def __init__(self, embedding: int, skips: tuple[int, int, int, int], channels: tuple[int, int, int, int],
                 mask_size: int) -> None:
        super().__init__()
        deep, mid, shallow, fine = skips
        c_deep, c_mid, c_shallow, c_fine = channels
        self.mask_size = mask_size
        self.deep = _conv(embedding + deep, c_deep)
        self.mid = _separable(c_deep + mid, c_mid)
        self.shallow = _separable(c_mid + shallow, c_shallow)
        self.fine = nn.Sequential(_separable(c_shallow + fine + 3, c_fine), _separable(c_fine, c_fine))
        self.logit = nn.Conv2d(c_fine, 1, 1)

    def forward(self, embedding: Tensor, deep: Tensor, mid: Tensor, shallow: Tensor, fine: Tensor,
                image: Tensor) -> Tensor:
        x = self.deep(torch.cat([embedding, deep], dim=1))
        x = self.mid(torch.cat([_up(x, mid), mid], dim=1))
        x = self.shallow(torch.cat([_up(x, shallow), shallow], dim=1))
        pooled = F.avg_pool2d(image, 2)
        x = self.fine(torch.cat([_up(x, fine), fine, pooled], dim=1))
        logits: Tensor = self.logit(x)
        if logits.shape[-1] != self.mask_size:
            logits = F.interpolate(logits, size=(self.mask_size, self.mask_size), mode="bilinear",
                                   align_corners=False)
        return logits[:, 0]


class EmbeddingHead(nn.Module):
    """Descriptor -> L2-normalised garment embedding: LayerNorm, a two-layer MLP, then unit length."""

    def __init__(self, descriptor: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(descriptor), nn.Linear(descriptor, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, dim))

    def forward(self, descriptor: Tensor) -> Tensor:
        return F.normalize(self.mlp(descriptor), dim=1)


class VerticalHead(nn.Module):
    """Descriptor -> product-vertical logits (softmax in :meth:`AttributeClassifier.outputs`)."""

    def __init__(self, descriptor: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(descriptor), nn.Linear(descriptor, hidden), nn.ReLU(inplace=True),
                                 nn.Dropout(0.1), nn.Linear(hidden, classes))

    def forward(self, descriptor: Tensor) -> Tensor:
        logits: Tensor = self.mlp(descriptor)
        return logits


class VerifierHead(nn.Module):
    """Descriptor -> per-category logit offsets ``[B, C]``, each ``-softplus(-g) <= 0``: the second stage.

    The descriptor is standardised with statistics fixed at fitting time (``mean``, ``std``: buffers
    saved with the weights), then a two-layer MLP gives ``g``; ``-softplus(-g)`` is about ``g`` where
    it is negative and about 0 where it is positive, so the head lowers scores and never raises one.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, descriptor: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(descriptor))
        self.register_buffer("std", torch.ones(descriptor))
        self.mlp = nn.Sequential(nn.Linear(descriptor, hidden), nn.ReLU(inplace=True), nn.Dropout(0.2),
                                 nn.Linear(hidden, classes))

    def forward(self, descriptor: Tensor) -> Tensor:
        g: Tensor = self.mlp((descriptor - self.mean) / self.std)
        return -F.softplus(-g)


def _up(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class AttributeClassifier(nn.Module):
    mean: Tensor
    std: Tensor

    def __init__(self, config: AttributeConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [_conv_bn(3, config.stem_channels, 3, 2)]
        channels = config.stem_channels
        stage_ends: list[int] = []
        stage_channels: list[int] = []
        for expansion, cout, blocks, stride in config.stages:
            for i in range(blocks):
                layers.append(InvertedResidual(channels, cout, stride if i == 0 else 1, expansion))
                channels = cout
            stage_ends.append(len(layers) - 1)
            stage_channels.append(cout)
        self._embedding_index = len(layers)
        layers += [_conv_bn(channels, config.embedding), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                   nn.Dropout(config.dropout)]
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(config.embedding, n) for n in config.group_sizes)
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        # The last block of the first and of the last three stages feed the mask head.
        self._skip_indices = (stage_ends[-1], stage_ends[-2], stage_ends[-3], stage_ends[0])
        self.mask_head: MaskHead | None = None
        if config.mask_size:
            skips = (stage_channels[-1], stage_channels[-2], stage_channels[-3], stage_channels[0])
            self.mask_head = MaskHead(config.embedding, skips, config.mask_channels, config.mask_size)
        # Every stage's last block and the embedding conv, average- and max-pooled: the descriptor.
        self._stage_ends = tuple(stage_ends)
        self.descriptor_size = 2 * (sum(stage_channels) + config.embedding)
        self.embedding_head: EmbeddingHead | None = None
        if config.retrieval_dim:
            self.embedding_head = EmbeddingHead(self.descriptor_size, config.head_hidden, config.retrieval_dim)
        self.vertical_head: VerticalHead | None = None
        if config.verticals:
            self.vertical_head = VerticalHead(self.descriptor_size, config.head_hidden, len(config.verticals))
        self.verifier_head: VerifierHead | None = None
        if config.verifier_classes:
            self.verifier_head = VerifierHead(self.descriptor_size, config.verifier_hidden, config.verifier_classes)

    @property
    def mask_size(self) -> int:
        """Side of the mask grid; 0 when this classifier has no mask head."""
        return self.config.mask_size if self.mask_head is not None else 0

    def _normalise(self, crops: Tensor) -> Tensor:
        return (crops.permute(0, 3, 1, 2).float() - self.mean) / self.std

    def _trunk(self, x: Tensor, wanted: tuple[int, ...] | None = None) -> tuple[Tensor, list[Tensor]]:
        """The pooled embedding and the maps of layers ``wanted`` (default: those the mask head reads)."""
        maps: list[Tensor] = []
        if wanted is None:
            wanted = (*self._skip_indices, self._embedding_index) if self.mask_head is not None else ()
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in wanted:
                maps.append(x)
        return x, maps

    def logits(self, crops: Tensor) -> list[Tensor]:
        """Per-group logits for uint8 (or float 0..255) crops [B, C, C, 3]."""
        embedding = self.features(self._normalise(crops))
        return [head(embedding) for head in self.heads]

    def forward(self, crops: Tensor) -> Tensor:
        """Concatenated per-group softmax [B, sum(group_sizes)]: the served output."""
        return torch.cat([torch.softmax(g, dim=1) for g in self.logits(crops)], dim=1)

    def mask_logits(self, crops: Tensor) -> Tensor:
        """Mask logits ``[B, m, m]`` over each crop's region (the head's training output)."""
        return self._with_masks(crops)[1]

    def predict(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        """Probs ``[B, A]`` and mask probabilities ``[B, m, m]`` in one pass over the trunk."""
        probs, logits = self._with_masks(crops)
        return probs, torch.sigmoid(logits)

    @property
    def output_names(self) -> tuple[str, ...]:
        """What :meth:`outputs` returns, in the exported graph's output order."""
        names = [OUTPUT_PROBS]
        if self.mask_head is not None:
            names.append(OUTPUT_MASKS)
        if self.embedding_head is not None:
            names.append(OUTPUT_EMBEDDINGS)
        if self.vertical_head is not None:
            names.append(OUTPUT_VERTICALS)
        if self.verifier_head is not None:
            names.append(OUTPUT_SCORE_OFFSETS)
        return tuple(names)

    def descriptor(self, crops: Tensor) -> Tensor:
        """The frozen trunk's pooled multi-stage features ``[B, descriptor_size]`` (what the embedding
        and vertical heads read; training caches it)."""
        return self._descriptor_and_maps(self._normalise(crops))[1]

    def _descriptor_and_maps(self, image: Tensor) -> tuple[Tensor, Tensor, dict[int, Tensor]]:
        indices = tuple(sorted({*self._stage_ends, *self._skip_indices, self._embedding_index}))
        embedding, maps = self._trunk(image, indices)
        by_index = dict(zip(indices, maps, strict=True))
        pooled = [by_index[i] for i in (*self._stage_ends, self._embedding_index)]
        descriptor = torch.cat([m.mean(dim=(2, 3)) for m in pooled] + [m.amax(dim=(2, 3)) for m in pooled], dim=1)
        return embedding, descriptor, by_index

    def outputs(self, crops: Tensor) -> dict[str, Tensor]:
        """Every output this classifier has, keyed by :attr:`output_names`, from one pass over the trunk:
        ``probs`` [B, A], ``masks`` [B, m, m] (probabilities), ``embeddings`` [B, D] (unit length),
        ``verticals`` [B, V] (softmax), ``score_offsets`` [B, C] (<= 0)."""
        if self.embedding_head is None and self.vertical_head is None and self.verifier_head is None:
            if self.mask_head is None:
                return {OUTPUT_PROBS: self(crops)}
            probs, masks = self.predict(crops)
            return {OUTPUT_PROBS: probs, OUTPUT_MASKS: masks}
        image = self._normalise(crops)
        embedding, descriptor, by_index = self._descriptor_and_maps(image)
        result = {OUTPUT_PROBS: torch.cat([torch.softmax(head(embedding), dim=1) for head in self.heads], dim=1)}
        if self.mask_head is not None:
            deep, mid, shallow, fine = (by_index[i] for i in self._skip_indices)
            logits = self.mask_head(by_index[self._embedding_index], deep, mid, shallow, fine, image)
            result[OUTPUT_MASKS] = torch.sigmoid(logits)
        if self.embedding_head is not None:
            result[OUTPUT_EMBEDDINGS] = self.embedding_head(descriptor)
        if self.vertical_head is not None:
            result[OUTPUT_VERTICALS] = torch.softmax(self.vertical_head(descriptor), dim=1)
        if self.verifier_head is not None:
            result[OUTPUT_SCORE_OFFSETS] = self.verifier_head(descriptor)
        return result

    def _with_masks(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        if self.mask_head is None:
            raise ValueError("this attribute classifier has no mask head (its config has mask_size=0)")
        image = self._normalise(crops)
        embedding, maps = self._trunk(image)
        # maps in _trunk's order: layers by index; pick them back by role.
        by_index = dict(zip(sorted((*self._skip_indices, self._embedding_index)), maps, strict=True))
        deep, mid, shallow, fine = (by_index[i] for i in self._skip_indices)
        logits = self.mask_head(by_index[self._embedding_index], deep, mid, shallow, fine, image)
        probs = torch.cat([torch.softmax(head(embedding), dim=1) for head in self.heads], dim=1)
        return probs, logits
