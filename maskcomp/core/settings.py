"""Every setting, declared once: its type, default, choices or range, a one-line doc, and which stages' outputs it
changes (their identity: a stage redoes its work when one of its settings changes). Validation (config.py), the
stage manifests (stages.config_keys) and configs/default.yaml (render_default_yaml; a test checks the file equals
it) all come from here. Code reads typed settings: `cfg.train.lr`.

A section's settings change the stages in its `stages` class variable unless declared `speed=True` (they change how
fast or where a stage runs, never what it writes); `stages=(...)` on a setting adds stages of its own. A setting
declared `shapes_input=True` shapes what a trained model is fed (a checkpoint is predicted with its own values); one
declared `invocation=True` is taken from the invocation even by a stored run. A setting declared `added=True` came
after runs were trained: while it holds its default it stays out of the manifests, so those runs keep their ids
(their outputs are what the default gives).
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from . import labels
from .paths import Paths

# A number keeps the type it was written with (1 stays 1, 1.0 stays 1.0): stage manifests digest the values, so a
# float conversion would change every run id of a config that writes `warmup_epochs: 1`.
Number = float | int


def setting(
    default: Any,
    doc: str,
    *,
    choices: tuple | None = None,
    low=None,
    high=None,
    length: int | None = None,
    items: tuple | None = None,
    stages: tuple[str, ...] = (),
    speed: bool = False,
    words: tuple[str, ...] = (),
    added: bool = False,
    shapes_input: bool = False,
    invocation: bool = False,
) -> Any:
    """One setting's declaration: a pydantic Field whose type (the annotation, checked strictly), bounds and length
    pydantic checks; the extras carry what its field types cannot (choices, list items, words, the bounds of a list's
    numbers; checked by Section._declared) and what the manifests need."""
    extra = {
        "choices": choices,
        "range": (low, high) if (low, high) != (None, None) else None,
        "length": length,
        "items": items,
        "stages": stages,
        "speed": speed,
        "words": words,
        "added": added,
        "shapes_input": shapes_input,
        "invocation": invocation,
    }
    limits: dict[str, Any] = {"min_length": length, "max_length": length} if length else {}
    if not words and not isinstance(default, list):  # pydantic bounds a number, not a list's or a word's
        limits.update(ge=low, le=high)
    if isinstance(default, (list, dict)):
        return Field(default_factory=lambda: copy.deepcopy(default), description=doc, json_schema_extra=extra, **limits)
    return Field(default=default, description=doc, json_schema_extra=extra, **limits)


def not_finite(value: Any) -> bool:
    """NaN or infinity anywhere in a value (lists and mappings too): YAML reads .nan and .inf as numbers."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(not_finite(v) for v in value.values())
    return isinstance(value, list) and any(not_finite(v) for v in value)


def _numbers(value: Any) -> list:
    """The numbers of a value, a list's and a list of lists' too."""
    items = value if isinstance(value, list) else [value]
    return [x for item in items for x in (item if isinstance(item, list) else [item])]


def within_declaration(info: dict, value: Any) -> bool:
    """Whether a value (already of the declared type) keeps to what its field type cannot say."""
    if not_finite(value):
        return False
    if info.get("choices"):
        return any(value is c if isinstance(c, bool) else value == c for c in info["choices"])
    if info.get("items"):
        return all(v in info["items"] for v in value)
    if isinstance(value, str):
        return not info.get("words") or value in info["words"]
    low, high = info.get("range") or (None, None)
    if isinstance(value, list) or info.get("words"):
        return all((low is None or x >= low) and (high is None or x <= high) for x in _numbers(value))
    return True


class Section(BaseModel):
    """A config section: unknown keys are an error, values are checked strictly against their declarations
    (config.py words pydantic's first error as one line)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=False)
    stages: ClassVar[tuple[str, ...]] = ()
    doc: ClassVar[str] = ""

    @field_validator("*")
    @classmethod
    def _declared(cls, value: Any, info: ValidationInfo) -> Any:
        if not within_declaration(setting_info(cls.model_fields[info.field_name]), value):
            raise PydanticCustomError("declared", "outside its declaration")
        return value

    @model_validator(mode="after")
    def _together(self) -> "Section":
        problem = self.cross_check(self.model_dump())
        if problem:
            raise PydanticCustomError("together", "{problem}", {"problem": problem})
        return self

    @classmethod
    def cross_check(cls, values: dict) -> str | None:
        """What is wrong with the section's values taken together (`key=value: expected ...`), or None."""
        return None


class PathsSettings(Section):
    data_root: str = setting(
        "input/data", "competition layout: train/train.csv, train/images, eval/info.csv, eval/images"
    )
    crops: str = setting("preprocess/crops", "face crops and detection records, keyed by the crop config's hash")
    folds: str = setting("folds/folds.csv", "the fold of every person")
    models: str = setting("models", "trained runs: models/<experiment>/<run-id>/fold<K>/")
    reports: str = setting("reports", "report pages and plots")
    submissions: str = setting("submissions", "submission CSVs with their JSON sidecars")
    cache: str = setting("cache", "decoded crops at training resolution (uint8 memmaps)")

    @functools.cached_property
    def resolved(self) -> Paths:
        """These paths, absolute, built once per settings object (settings are not changed after loading)."""
        return Paths.absolute(self.model_dump())


class DataSettings(Section):
    stages: ClassVar = ("train",)
    image_check: str = setting(
        "header",
        "how hard to look at every image when loading",
        choices=("header", "decode", "none"),
        stages=("crop",),
        speed=True,
    )
    skip_bad: bool = setting(
        False,
        "true: list bad persons/images in reports/skipped_<split>.csv instead of failing",
        stages=("crop", "folds"),
        invocation=True,
    )
    label_fixes: list[str] = setting(
        [], "CSV files in the label-fixes format (see README), applied in order", stages=("folds",)
    )
    known_label_fixes: bool = setting(
        False, "true: also apply configs/label_fixes_known.csv (public write-ups' fixes)", stages=("folds",)
    )


class SampleSettings(Section):
    doc: ClassVar = "the generated dataset of `make sample`"
    persons: int = setting(150, "training persons", low=2)
    eval_persons: int = setting(40, "eval persons", low=1)
    seed: int = setting(0, "the generator's seed")


class CropSettings(Section):
    mode: str = setting(
        "mtcnn",
        "face boxes from MTCNN, a fixed centre box, or the whole image",
        choices=("mtcnn", "center", "none"),
        stages=("crop",),
        shapes_input=True,
    )
    device: str = setting("auto", "auto | cpu | cuda")
    batch_size: int = setting(16, "images per MTCNN call", low=1)
    detect_scale: Number = setting(
        0.5,
        "detect on a downscaled copy; faces here are large, so this is ~4x faster",
        low=0.05,
        high=1.0,
        stages=("crop", "detect"),
    )
    min_face_size: int = setting(40, "in pixels of the full-size image", low=12, stages=("crop", "detect"))
    thresholds: list[Number] = setting(
        [0.6, 0.7, 0.7], "MTCNN's three stage thresholds", low=0.0, high=1.0, length=3, stages=("crop", "detect")
    )
    relaxed_thresholds: list[Number] = setting(
        [0.4, 0.5, 0.5],
        "the retry's thresholds on an equalised copy",
        low=0.0,
        high=1.0,
        length=3,
        stages=("crop", "detect"),
    )
    margin: Number = setting(
        0.25,
        "box grows by this fraction of its size on each side",
        low=0.0,
        high=2.0,
        stages=("crop",),
        shapes_input=True,
    )
    aspect: Number = setting(
        0.75,
        "crop width / height, matching the model input",
        low=0.1,
        high=10.0,
        stages=("crop",),
        shapes_input=True,
    )
    outlier_fallback: bool = setting(
        False,
        "a detected face box whose centre lies more than OUTLIER_PX (80) from the median of the same person's boxes "
        "(a neck, a bystander) is replaced by that median box; the crop report lists such boxes either way",
        stages=("crop",),
        added=True,
    )
    center_box: list[Number] = setting(
        [0.15, 0.12, 0.85, 0.75],
        "x1, y1, x2, y2 as image fractions, for mode center and the last fallback",
        low=0.0,
        high=1.0,
        length=4,
        stages=("crop",),
    )
    workers: int = setting(2, "decoding processes beside the detector", low=0)


class OversampleSettings(Section):
    strategy: str = setting(
        "none", "repeat rare persons in training splits, or a weighted sampler", choices=("none", "repeat", "sampler")
    )
    head: str = setting("age", "whose classes the targets name", choices=("label", "mask", "gender", "age"))
    targets: dict = setting(
        {}, "class of the head (index or name, e.g. 2 or '>=60') -> target share in the training split, e.g. {2: 0.2}"
    )

    @classmethod
    def cross_check(cls, values: dict) -> str | None:
        targets = values["targets"] or {}
        names = head_class_names(values["head"])
        for key in targets:
            if target_class(values["head"], key) is None:
                known = ", ".join(f"{i} ({n})" for i, n in enumerate(names))
                return f"targets={targets!r}: {key!r} is not a class of head {values['head']}; expected one of {known}"
        shares = list(targets.values())
        if any(isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0 for t in shares) or sum(shares) >= 1:
            return f"targets={targets!r}: expected positive shares that sum to less than 1"
        return None


def head_class_names(head: str) -> tuple[str, ...]:
    """The class names of a head that folds.oversample.targets may name (label: the 18 classes)."""
    return (
        tuple(labels.class_name(c) for c in range(labels.NUM_CLASSES)) if head == "label" else labels.HEAD_NAMES[head]
    )


def target_class(head: str, key: Any) -> int | None:
    """A targets key (an index, its text, or a class name) as the head's class index, or None when it names none."""
    names = head_class_names(head)
    if isinstance(key, bool):
        return None
    if isinstance(key, int) or (isinstance(key, str) and key.strip().isdecimal()):
        index = int(key)
        return index if 0 <= index < len(names) else None
    return names.index(key) if key in names else None


class FoldsSettings(Section):
    stages: ClassVar = ("train",)
    k: int = setting(5, "folds over persons, stratified by gender x age group", low=2, stages=("folds",))
    seed: int = setting(42, "the split's seed", stages=("folds",))
    oversample: OversampleSettings = Field(default_factory=OversampleSettings, description="training splits only")


class ModelSettings(Section):
    stages: ClassVar = ("train",)
    backbone: str = setting("efficientnet_lite0", "any timm model name", shapes_input=True)
    pretrained: bool | str = setting("pypi", "false | pypi | hub | path to a weights file")
    head: str = setting(
        "multi",
        "single (18-way) | multi (mask 3, gender 2, age 3) | ordinal (age as P(age >= k))",
        choices=("single", "multi", "ordinal"),
    )
    drop_rate: Number = setting(0.2, "dropout before the heads", low=0.0, high=0.99)
    freeze_backbone_epochs: int = setting(0, "epochs that train the heads alone", low=0)


class HeadWeights(Section):
    mask: Number = setting(1.0, "the mask head's loss weight")
    gender: Number = setting(1.0, "the gender head's loss weight")
    age: Number = setting(1.0, "the age head's loss weight")


class LossSettings(Section):
    stages: ClassVar = ("train",)
    terms: list[dict] = setting([{"name": "ce", "weight": 1.0}], "weighted sum of: ce, focal, f1")
    label_smoothing: Number = setting(0.0, "label smoothing of ce", low=0.0, high=0.99)
    focal_gamma: Number = setting(2.0, "focal loss gamma", low=0.0)
    class_weights: str = setting("none", "none | balanced", choices=("none", "balanced"))
    head_weights: HeadWeights = Field(default_factory=HeadWeights, description="per-head loss weights")


class AugmentSettings(Section):
    stages: ClassVar = ("train",)
    hflip: Number = setting(0.5, "probability of a horizontal flip", low=0.0, high=1.0)
    color_jitter: Number = setting(0.3, "probability of colour jitter", low=0.0, high=1.0)
    shift_scale_rotate: Number = setting(0.5, "probability of an affine jitter", low=0.0, high=1.0)
    coarse_dropout: Number = setting(0.0, "probability of coarse dropout", low=0.0, high=1.0)
    mixup_alpha: Number = setting(0.0, "timm Mixup (single head only)", low=0.0)
    cutmix_alpha: Number = setting(0.0, "timm CutMix (single head only)", low=0.0)
    mix_prob: Number = setting(0.0, "probability of Mixup/CutMix per batch", low=0.0, high=1.0)
    half_cutmix: Number = setting(
        0.0, "probability of label-preserving left/right half CutMix per sample", low=0.0, high=1.0
    )
    half_cutmix_rare_only: bool = setting(False, "mix only age >= 60 images")
    background: Number = setting(
        0.0,
        "probability that everything outside the (jittered) face box is replaced (background_fill): a model that "
        "cannot lean on hair, clothes or backdrop; faces from the crop records (crop.mode=mtcnn)",
        low=0.0,
        high=1.0,
        added=True,
    )
    background_fill: str = setting(
        "grey", "what replaces the background: grey, blur or noise", choices=("grey", "blur", "noise"), added=True
    )
    background_jitter: Number = setting(
        0.1, "each face box side moves by up to this share of the box's size", low=0.0, high=0.5, added=True
    )


class TrainSettings(Section):
    stages: ClassVar = ("train",)
    img_size: list[int] = setting([256, 192], "height, width", low=32, high=4096, length=2, shapes_input=True)
    epochs: int = setting(10, "epochs per fold", low=1)
    batch_size: int | str = setting(
        32,
        "training batch, or auto: the largest that fits, found by halving train.auto_batch_max on out-of-memory "
        "(a GPU's answer; on the CPU nothing runs out, so auto is auto_batch_max)",
        low=1,
        words=("auto",),
    )
    auto_batch_max: int = setting(256, "where batch_size=auto starts halving", low=1, added=True)
    accumulate: int = setting(
        1,
        "batches whose gradients add up before each optimiser step (effective batch: batch_size x this)",
        low=1,
        added=True,
    )
    val_batch_size: int = setting(
        64, "the validation loader's batch (speed only: scores do not depend on it)", low=1, speed=True
    )
    optimizer: str = setting("adamw", "any timm optimizer name (timm.optim.create_optimizer_v2)")
    scheduler: str = setting(
        "cosine", "timm.scheduler.create_scheduler_v2, stepped every update", choices=("cosine", "tanh", "poly")
    )
    lr: Number = setting(0.001, "peak learning rate", low=1e-8, high=10.0)
    weight_decay: Number = setting(0.01, "decoupled weight decay", low=0.0)
    warmup_epochs: Number = setting(1.0, "linear warm-up, in epochs", low=0)
    grad_clip: Number = setting(1.0, "gradient norm clip (0: none)", low=0.0)
    ema: bool = setting(False, "validate and keep an exponential moving average of the weights")
    ema_decay: Number = setting(0.999, "cap of the warmed-up decay (timm ModelEmaV3 use_warmup)", low=0.0, high=0.99999)
    patience: int = setting(5, "epochs without a better macro F1 before stopping", low=1)
    amp: str = setting("bf16", "bf16 | fp16 | none (CUDA only; CPU always runs fp32)", choices=("bf16", "fp16", "none"))
    channels_last: bool = setting(True, "channels-last memory format")
    compile: bool = setting(False, "torch.compile the network", speed=True)
    workers: int = setting(2, "DataLoader workers", low=0, speed=True)
    threads: int = setting(
        0,
        "torch intra-op threads of the training process; 0: chosen from the CPUs it may use",
        low=0,
        high=1024,
        speed=True,
    )
    cudnn_benchmark: bool = setting(True, "CUDA only: let cuDNN pick the fastest convolution algorithms", speed=True)
    tf32: bool = setting(True, "CUDA only: TF32 matmul/convolutions on Ampere and newer")
    age_old_threshold: int = setting(60, "training labels only; scoring always uses 60", low=31, high=100)
    drop_age_bands: list[list[int]] = setting(
        [], "e.g. [[27, 29], [57, 59]]: drop these ages from training splits only", low=0, high=150
    )
    folds: list[int] = setting([], "folds to train; empty: all folds", low=0, speed=True)
    limit_batches: int = setting(0, "debug: train on the first N batches of each epoch only (0: all)", low=0)
    overfit_batches: int = setting(
        0,
        "wiring check: train on the same N batches every epoch, unaugmented; the "
        "training loss must then go near 0 (0: off)",
        low=0,
    )
    deterministic: bool = setting(True, "deterministic algorithms on the CPU")
    loggers: list[str] = setting(
        [],
        "tracking beside metrics.csv: tensorboard (each fold's tb/), wandb (W&B; offline unless logged in)",
        items=("tensorboard", "wandb"),
        speed=True,
    )
    wandb_project: str = setting("maskcomp", "the W&B project; runs are grouped by experiment", speed=True)
    wandb_mode: str = setting(
        "auto",
        "auto: online when WANDB_API_KEY is set, else offline (never a prompt); online | offline",
        choices=("auto", "online", "offline"),
        speed=True,
    )
    device: str = setting("auto", "auto | cpu | cuda", speed=True)


class InferSettings(Section):
    tta: list[str] = setting(["identity", "hflip"], "identity | hflip | scale:<factor>", stages=("infer",))
    tta_reduce: str = setting(
        "mean_probs",
        "average the views' probabilities or logits",
        choices=("mean_probs", "mean_logits"),
        stages=("infer",),
    )
    batch_size: int = setting(64, "images per forward pass", low=1)
    engine: str = setting(
        "torch",
        "torch | onnxruntime: each fold model exported once to ONNX beside its checkpoint and run by onnxruntime "
        "(CPU only; 1.9-3.6x the torch engine's images/s on 2 cores, probabilities within 1e-6; "
        "make bench ARGS=engine)",
        choices=("torch", "onnxruntime"),
        stages=("infer",),
        added=True,
    )
    neighbours: bool = setting(
        False,
        "look-alike persons: each fold model's penultimate features find every OOF and eval image's nearest training "
        "persons of that fold (cosine, a person's images pooled); the ensemble blends their age and gender shares "
        "into the heads, with k and the weight chosen on OOF and kept only when the nested gain is positive",
        stages=("infer",),
        added=True,
    )
    person_grouping: bool | str = setting(
        "auto",
        "auto | on | off: group eval images into persons and decide "
        "gender/age per person (transductive; auto: only when the nested OOF gain "
        "is positive; see README)",
        choices=("auto", True, False),
    )
    group_min_similarity: Number = setting(
        0.4, "thumbnail cosine similarity below which an image is not joined to a person", low=-1.0, high=1.0
    )


class EnsembleSettings(Section):
    experiments: list[str] = setting([], "empty: this config's experiment; entries may name a run: experiment@run-id")
    weights: str = setting("equal", "equal | fit", choices=("equal", "fit"))
    tune_biases: bool | str = setting(
        "auto",
        "true | false | auto: tune, but apply only if the nested (held-out fold) gain is positive",
        choices=(True, False, "auto"),
    )
    bias_mode: str = setting(
        "class",
        "class (18 biases) | head (mask 3 + gender 2 + age 3, for multi-head models)",
        choices=("class", "head"),
    )
    bias_rounds: int = setting(3, "coordinate-ascent rounds", low=0)
    tune_age_cuts: bool | str = setting(
        "auto",
        "true | false | auto: with model.head=ordinal, tune the age groups' cut points (not 30/60)",
        choices=(True, False, "auto"),
    )
    models: str = setting(
        "folds",
        "which models predict eval: the fold models, the refit models (make refit), or both, all equally weighted; "
        "the CV always comes from the fold models' OOF",
        choices=("folds", "refit", "both"),
    )
    name: str = setting("", "submission name; empty: the experiment(s) joined")
    vote: list[str] = setting(
        [],
        "submission CSVs to hard-vote instead of blending experiments (ties: the file with "
        "the higher CV in its sidecar)",
    )
    stamped_copy: bool = setting(True, "also write <name>_cv<CV>_<date>.csv (+ .json): an upload you can tell apart")
    heads: dict[str, str] = setting(
        {},
        "the best model per head: {mask: a, gender: b, age: a} (experiments, or experiment@run-id), every head named; "
        "the 18 classes are composed from each head's experiment on OOF and eval, and the decision steps run on the "
        "composed OOF; empty: every head from the blend of ensemble.experiments",
    )

    @classmethod
    def cross_check(cls, values: dict) -> str | None:
        heads = values["heads"] or {}
        named = all(isinstance(v, str) and v.strip() for v in heads.values())
        if heads and (set(heads) != set(labels.HEADS) or not named):
            example = "{mask: a, gender: b, age: a}"
            return f"heads={heads!r}: expected an experiment for each of mask, gender and age, e.g. {example}"
        return None


class PseudoSettings(Section):
    doc: ClassVar = "pseudo-labels: confident eval predictions of a submission added to every fold's training split"
    stages: ClassVar = ("train",)
    submission: str = setting(
        "",
        "a submission CSV (submissions/<name>.csv; its <name>.probs.csv beside it, written by make ensemble) whose "
        "confident eval images join every fold's training split, never a validation fold; empty: none. The "
        "probabilities' digest is part of the run's identity",
        added=True,
    )
    threshold: Number = setting(
        0.9,
        "the confidence (top class probability; a person group's mean when the submission grouped persons) an eval "
        "image needs to be added",
        low=0.0,
        high=1.0,
        added=True,
    )


class RefitSettings(Section):
    doc: ClassVar = "make refit: models trained on every training person, for the eval predictions"
    stages: ClassVar = ("refit",)
    seeds: int = setting(1, "refit models, each with its own seed", low=1)
    epochs: int = setting(0, "epochs of each refit model; 0: the median of the folds' best epochs", low=0)


class AttentionSettings(Section):
    doc: ClassVar = "make analyze: Grad-CAM per head, the face share, the greyed-background check, the embedding view"
    weakest: int = setting(2, "classes of each head shown, weakest first (per-head OOF F1)", low=1)
    errors: int = setting(3, "most confident errors shown per class", low=0)
    correct: int = setting(2, "confident correct images shown per class", low=0)
    per_class: int = setting(8, "images per head class whose attention is measured (face share)", low=1)
    grey_per_class: int = setting(15, "OOF images per class (of 18) scored with the background greyed out", low=1)
    warn_below: Number = setting(0.5, "warn when a head's face share is below this", low=0.0, high=1.0)
    embedding_train: int = setting(200, "training images per fold whose features are searched for neighbours", low=1)


class RelabelSettings(Section):
    doc: ClassVar = 'label-noise candidates (make analyze, make relabel); see README "Label noise"'
    prior: Number = setting(
        0.03, "share of persons with one kind of label error (2-3 % in the competition)", low=1e-4, high=0.5
    )
    auto_min_confidence: Number = setting(
        0.8, "estimated precision at which a fix is applied without review", low=0.0, high=1.0
    )
    systematic_rate: Number = setting(
        0.3, 'the model says "labelled A looks B" for this share of A: its failure, not noise', low=0.0, high=1.0
    )
    top: int = setting(50, "candidates shown on the analysis page", low=1)
    auto_kinds: list[str] = setting(
        ["gender", "swap_incorrect_normal"],
        "kinds applied automatically; age fixes go to review by default",
        items=("gender", "age", "swap_incorrect_normal"),
    )


class TuneSettings(Section):
    doc: ClassVar = 'make tune: an Optuna search; its space and budget (see README "Experiments")'
    study: str = setting("", "the study's name; empty: the tune file's name")
    trials: int = setting(20, "trials of the study, all workers together (finished and pruned ones count)", low=1)
    minutes: Number = setting(0.0, "this worker stops starting trials after this many minutes (0: no limit)", low=0)
    pruner: str = setting(
        "halving",
        "stop a trial after a fold whose running fold mean is poor: successive halving, median, or never",
        choices=("halving", "median", "none"),
    )
    startup_trials: int = setting(2, "median pruner: trials that are never pruned, for a first reference", low=0)
    seed: int = setting(0, "the sampler's seed (each worker adds its process id, so workers draw apart)", low=0)
    heartbeat_s: int = setting(
        60, "a worker's heartbeat; a trial silent for 2 beats counts as failed and is retried", low=1
    )
    retries: int = setting(2, "times a failed (stale) trial is tried again", low=0)
    space: dict = setting(
        {},
        "setting -> {low, high[, log]} (whole numbers: int) or {choices: [...]}, e.g. train.lr: {low: 1e-4, "
        "high: 1e-2, log: true}",
    )


class Settings(Section):
    """A whole config."""

    stages: ClassVar = ("train",)
    experiment: str = setting("default", "the experiment's name: models/<experiment>/", speed=True)
    seed: int = setting(42, "seed of training (each fold adds its number)", low=0)
    run: str = setting(
        "latest",
        "the training run infer/ensemble/analyze use: latest, or a run id under models/<experiment>/",
        speed=True,
    )
    partial_run: bool = setting(
        False,
        "true: a run whose folds are not all trained may still be submitted (its sidecar and stamped name say so) or "
        "refit (epochs from its finished folds); false: such a run is refused, naming the missing folds",
        speed=True,
    )
    paths: PathsSettings = Field(default_factory=PathsSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    sample: SampleSettings = Field(default_factory=SampleSettings)
    crop: CropSettings = Field(default_factory=CropSettings)
    folds: FoldsSettings = Field(default_factory=FoldsSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    loss: LossSettings = Field(default_factory=LossSettings)
    augment: AugmentSettings = Field(default_factory=AugmentSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    infer: InferSettings = Field(default_factory=InferSettings)
    ensemble: EnsembleSettings = Field(default_factory=EnsembleSettings)
    pseudo: PseudoSettings = Field(default_factory=PseudoSettings)
    refit: RefitSettings = Field(default_factory=RefitSettings)
    relabel: RelabelSettings = Field(default_factory=RelabelSettings)
    attention: AttentionSettings = Field(default_factory=AttentionSettings)
    tune: TuneSettings = Field(default_factory=TuneSettings)


def setting_info(field) -> dict:
    """The declaration's extras of a field (empty for a nested section)."""
    return field.json_schema_extra or {}


def is_section(field) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, Section)


def leaves(
    model: type[Section] = Settings, prefix: str = "", parent_stages: tuple = ()
) -> list[tuple[str, Any, tuple]]:
    """(dotted name, field, stages whose identity it enters) of every setting; a section nested inside a section
    (folds.oversample, loss.head_weights) counts as one setting of its parent, whole."""
    out = []
    for name, field in model.model_fields.items():
        dotted = prefix + name
        if is_section(field) and model is Settings:
            out += leaves(field.annotation, dotted + ".", field.annotation.stages)
            continue
        info = setting_info(field)
        own = () if info.get("speed") else (parent_stages if model is not Settings else Settings.stages)
        out.append((dotted, field, tuple(dict.fromkeys(own + tuple(info.get("stages", ()))))))
    return out


def added_defaults(stage: str) -> dict[str, Any]:
    """Settings of `stage` declared `added=True`, with their defaults: left out of its manifest while at them."""
    return {
        name: field.get_default(call_default_factory=True)
        for name, field, stages in leaves()
        if stage in stages and setting_info(field).get("added")
    }


def input_shaping_keys() -> list[str]:
    """The settings that shape what a trained model is fed (declared shapes_input=True)."""
    return [name for name, field, _ in leaves() if setting_info(field).get("shapes_input")]


def invocation_keys() -> list[str]:
    """The settings a stored run takes from the invocation that uses it (paths, devices, infer, ensemble, ...): those
    that enter none of the identities of the stages that made the run (crop, folds, train); `experiment` stays the
    run's own; a setting declared invocation=True (data.skip_bad: whether bad eval images are skipped) too."""
    made_by = {"crop", "folds", "train"}
    return [
        name
        for name, field, stages in leaves()
        if (not made_by & set(stages) and name != "experiment") or setting_info(field).get("invocation")
    ]


def identity_keys(stage: str) -> list[str]:
    """The settings whose values are part of `stage`'s identity (its manifest)."""
    return [name for name, _, stages in leaves() if stage in stages]


def section_keys(section: str, stage: str) -> tuple[str, ...]:
    """The names (without the section) of `section`'s settings in `stage`'s identity, in declaration order."""
    return tuple(k.split(".", 1)[1] for k in identity_keys(stage) if k.startswith(section + "."))


def value_of(cfg: Settings, dotted: str) -> Any:
    """A setting by its dotted name, for code that names settings in tables (infer's input-shaping keys)."""
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _yaml_value(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _yaml_lines(model: type[Section], indent: str) -> list[str]:
    lines = []
    for name, field in model.model_fields.items():
        if is_section(field):
            sub = field.annotation
            note = sub.doc or (field.description or "")
            lines.append(
                f"{indent}{name}:" + (f"{' ' * max(1, 35 - len(indent) - len(name) - 1)}# {note}" if note else "")
            )
            lines += _yaml_lines(sub, indent + "  ")
            if model is Settings:
                lines.append("")
            continue
        text = f"{indent}{name}: {_yaml_value(field.get_default(call_default_factory=True))}"
        doc, choices = field.description or "", setting_info(field).get("choices")
        if choices and "|" not in doc:
            doc = " | ".join(str(c).lower() if isinstance(c, bool) else c for c in choices) + ": " + doc
        lines.append(f"{text.ljust(34)} # {doc}" if doc else text)
    return lines


def render_default_yaml() -> str:
    """configs/default.yaml: every key with its default and doc, made from the declarations above."""
    head = [
        "# Every key a config may set, with its default; generated from maskcomp/core/settings.py (the one",
        "# declaration of each setting: `python -m maskcomp.core.settings > configs/default.yaml`). Other configs",
        "# override these (a config may name a parent with `base: <file>`); a key not listed here is an error.",
        "",
    ]
    return "\n".join(head + _yaml_lines(Settings, "")).rstrip() + "\n"


if __name__ == "__main__":
    print(render_default_yaml(), end="")
