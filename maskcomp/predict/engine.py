"""Inference engines: a fold model as torch runs it, or exported once to ONNX (beside its checkpoint, named by the
checkpoint's digest) and run by onnxruntime on the CPU, where its fused kernels (batch norm folded into the
convolutions, activations fused) run the same network at 1.9-3.6x the speed of torch with channels_last here
(`make bench ARGS=engine`). Both engines take the same batches, TTA views included, and give the same head logits
to within float rounding (tests/test_engine.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..core.errors import MaskcompError
from ..core.fileio import atomic_path
from ..core.manifests import DigestCache
from ..runs import FoldFiles

ENGINES = ("torch", "onnxruntime")
ONNX_OPSET = 17


class OnnxModel:
    """A fold model's ONNX export in an onnxruntime session, called like the torch model: a batch of images in, a
    logits tensor per head out."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.heads = [output.name for output in self.session.get_outputs()]

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.session.run(None, {"images": np.ascontiguousarray(images.float().cpu().numpy())})
        return {head: torch.from_numpy(values) for head, values in zip(self.heads, outputs)}


def export_onnx(model: torch.nn.Module, size: tuple[int, int], path: Path) -> Path:
    """The model in eval mode as ONNX with a free batch size; its outputs are named after its heads."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(1, 3, *size)
    with torch.inference_mode():
        heads = list(model(example))
    axes = {name: {0: "batch"} for name in ("images", *heads)}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model, (example,), str(tmp), input_names=["images"], output_names=heads, dynamic_axes=axes,
            opset_version=ONNX_OPSET, dynamo=False,
        )  # fmt: skip
    return path


def engine_model(
    model: torch.nn.Module, files: FoldFiles, digests: DigestCache, size: tuple[int, int], engine: str, device
) -> torch.nn.Module | OnnxModel:
    """`model` itself (engine torch), or its ONNX export (made once per checkpoint content, named by the digest the
    process's cache knows) in onnxruntime."""
    if engine == "torch":
        return model
    if device.type != "cpu":
        raise MaskcompError(
            f"infer.engine={engine} runs on the CPU, but the run predicts on {device.type}; set infer.engine=torch "
            "(on a GPU torch is the fast engine) or train.device=cpu"
        )
    path = files.onnx(digests.digest(files.best))
    if not path.exists():
        export_onnx(model, size, path)
    return OnnxModel(path, torch.get_num_threads())
