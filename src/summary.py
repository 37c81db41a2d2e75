"""``summary.json``: the one record of a finished run, and its schema, defined once.

`src.pipeline` writes it (:func:`assemble` puts the values in the schema's order, :func:`write`);
`src.tables`, `experiments/` and the analysis notebook read it (:func:`load` validates a file
against the schema). :data:`FIELDS` lists every key, in file order, with its type and meaning.

Figures are final-epoch figures, never best-epoch. A classification run has the ``test_acc_*``
keys, a segmentation run the ``test_miou_*`` keys (``{metric}`` below); ``{stage}`` is each of
:data:`STAGES`. A summary written now has every ``required`` key; one written by an older version
of the pipeline may lack the ``new`` ones. Every key present must have its schema type, and no
other key is allowed (a reader's own annotations start with ``_``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

__all__ = ["FILENAME", "STAGES", "METRICS", "Field", "FIELDS", "SummaryError", "fields", "keys", "assemble",
           "validate", "load", "write", "metric_of"]

FILENAME = "summary.json"
# The four evaluations of one run: the model as trained (full kernels); after projection W <- AA^+W
# before and after BatchNorm recalibration; the decomposed deploy model (sum-pooling + small convs).
STAGES = ("dense", "projected_raw", "projected", "decomposed")
METRICS = {"classification": "acc", "segmentation": "miou"}  # task -> {metric}

_NUM = (int, float)
_STR = (str,)
_INT = (int,)
_BOOL = (bool,)


@dataclass(frozen=True)
class Field:
    """One key of summary.json."""

    key: str                  # may hold "{metric}" and "{stage}", expanded by fields()
    types: tuple[type, ...]   # the Python types of its JSON value (bool is never a number here)
    meaning: str
    null: bool = False        # the value may be null
    required: bool = True     # written into every summary (False: only where measured)
    new: bool = False         # summaries of older versions of the pipeline may lack it
    task: str | None = None   # only in summaries of this task ("classification" / "segmentation")


FIELDS: tuple[Field, ...] = (
    # what ran
    Field("model", _STR, "registered model name (src.models.list_models)"),
    Field("dataset", _STR, "data.name: cifar10, imagenet or cityscapes"),
    Field("route", _STR, "structure.route: 'regularized' (train + lambda * structural loss, then project and "
                          "decompose) or 'direct' (the decomposed architecture trained from scratch)"),
    Field("tag", _STR, "the configuration's tag (run-name suffix, e.g. '_lam0.1' in a sweep)"),
    Field("profile", _STR, "label of the reproduction profile (quick / full / custom / ...)", new=True),
    Field("config_hash", _STR, "hash of every result-changing setting but the seed (src.runs.config_hash); "
                               "the tables group a row's seeds by it", new=True),
    Field("run_hash", _STR, "the same hash with the seed", new=True),
    Field("overrides", (list,), "the Hydra command-line overrides of the run", new=True),
    Field("seed", _INT, "the run's seed"),
    Field("epochs", _INT, "epochs trained (the final epoch's number + 1)"),
    Field("max_epochs", _INT, "trainer.max_epochs"),
    Field("lambda", _NUM, "weight of the structural loss (0 for the direct route and for models without "
                          "structured layers)"),
    Field("lambda_ramp_epochs", _NUM, "epochs over which lambda ramps linearly from 0"),
    Field("bn_recalib", _BOOL, "whether BatchNorm statistics were re-estimated after projection (false for a "
                               "model without structured layers)"),
    Field("train_subset", _INT, "data.train_subset: training examples used (null: the whole split)", null=True),
    Field("test_subset", _INT, "data.test_subset: test examples used (null: the whole split)", null=True),
    Field("eval_set", _STR, "the primary evaluation set, which the test_* keys measure: 'test' (the official test "
                            "set) or 'train[start:end]' (training images held out, never trained on)",
          required=False, new=True, task="classification"),
    Field("train_images", _INT, "number of training images trained on", required=False, new=True,
          task="classification"),
    Field("val_subset", _INT, "data.val_subset: the per-epoch validation (metrics.csv val/*) used the first N images "
                              "of the primary set; every final figure uses all of it. Absent: all of it",
          required=False, new=True, task="classification"),
    Field("precision", _STR, "trainer.precision of the training steps (final figures are measured in fp32)",
          required=False, new=True),
    # where the weights came from and how they were compressed (src/init_from.py, src/compress)
    Field("init_from", _STR, "model.init_from: the weights the run started from (a Lightning checkpoint, a dense "
                             "run's deploy.pt or a state_dict file; 'pretrained' for model.pretrained=true); absent "
                             "for a random initialisation", required=False, new=True),
    Field("init_from_sha256", _STR, "sha256 of the init_from file's bytes", required=False, new=True),
    Field("init_from_run", _STR, "the run init_from belongs to (its summary.json beside the file): "
                                 "'<config_hash> seed <seed> at <git_sha>'", required=False, new=True),
    Field("method", _STR, "model.compress.method: how the model was compressed before training (src/compress: "
                          "structured, prune_l1, svd_weight, svd_spatial); absent without compression",
          required=False, new=True),
    Field("target_mults_ratio", _NUM, "model.compress.mults_ratio: target multiplications per image of the "
                                      "compressed model (decomposed form) over the uncompressed model's",
          required=False, new=True),
    Field("achieved_mults_ratio", _NUM, "mults_decomposed over the uncompressed model's multiplications "
                                        "(within 2 % of target_mults_ratio)", required=False, new=True),
    # test figures, in %, 4 decimals (null where the metric was not logged)
    Field("test_{metric}_{stage}", _NUM, "test accuracy (classification) or mIoU (segmentation) in % after "
                                         "the stage", null=True),
    Field("test_acc_{stage}_exact_subset", _NUM, "test accuracy in % on the bit-exact subset of the offline "
                                                 "CIFAR-10 test set (npz layouts only)", null=True, required=False,
          task="classification"),
    # the final model (decomposed; the baseline itself for a dense run) beyond the primary set, in %
    Field("official_test_acc", _NUM, "accuracy on the whole official test set (when the primary set is held out)",
          null=True, required=False, new=True, task="classification"),
    Field("official_test_acc_exact", _NUM, "accuracy on the bit-exact part of the official test set (all of it "
                                           "with torchvision's copy, 1,000 images in the offline npz copy)",
          null=True, required=False, new=True, task="classification"),
    Field("official_test_acc_jpeg", _NUM, "accuracy on the JPEG-decoded part of the offline npz test set "
                                          "(null with an exact copy)", null=True, required=False, new=True,
          task="classification"),
    Field("robust_acc_jpeg75", _NUM, "accuracy on the primary set re-encoded as JPEG, quality 75 "
                                     "(src/data/corruptions.py)", required=False, new=True, task="classification"),
    Field("robust_acc_jpeg50", _NUM, "the same at JPEG quality 50", required=False, new=True, task="classification"),
    Field("robust_acc_noise", _NUM, "accuracy on the primary set with Gaussian noise (sigma 0.05, seed 0)",
          required=False, new=True, task="classification"),
    Field("robust_acc_blur", _NUM, "accuracy on the primary set blurred (Gaussian, 3x3, sigma 1)",
          required=False, new=True, task="classification"),
    # cost per image (src.structured.complexity)
    Field("params_dense", _INT, "parameters of the model as trained (full kernels)"),
    Field("params_decomposed", _INT, "parameters of the decomposed (deploy) model"),
    Field("mults_dense", _INT, "multiplications per image, model as trained"),
    Field("mults_decomposed", _INT, "multiplications per image, decomposed model"),
    Field("adds_dense", _INT, "additions per image, model as trained"),
    Field("adds_decomposed", _INT, "additions per image, decomposed model (naive sum-pooling)"),
    Field("adds_decomposed_running", _INT, "additions per image, decomposed model (running-sum sum-pooling)"),
    # structure
    Field("structural_residual_final", _NUM, "largest relative structural residual over the structured "
                                             "layers at the end of training (0 without structured layers)"),
    Field("structural_residual_mean_final", _NUM, "mean relative structural residual at the end of training"),
    # time and machine
    Field("wall_time_s", _NUM, "wall time of the process that finished the run, in s"),
    Field("train_time_s", _NUM, "training time summed over all epochs (resumed ones included), in s",
          new=True),
    Field("resumed", _BOOL, "whether the run was resumed from a checkpoint", new=True),
    Field("train_images_per_s", _NUM, "training throughput of the finishing process, all ranks", null=True),
    Field("device", _STR, "the device trained on (e.g. 'cpu', 'cuda:0')"),
    Field("world_size", _INT, "number of processes (DDP ranks)"),
    Field("threads", _INT, "torch intra-op threads of the process"),
    Field("torch", _STR, "torch version"),
    Field("git_sha", _STR, "commit of the code ('-dirty' appended for uncommitted changes)"),
    Field("git_sha_start", _STR, "commit when the run started (a resumed run continued on the same training "
                                 "code: code.json's fingerprint is checked on resume)", required=False, new=True),
)
# Always present in a classification summary (null where not measured): the key names of the contract.
_ALWAYS = {"test_acc_decomposed_exact_subset"}


class SummaryError(ValueError):
    """A summary does not follow the schema."""


def metric_of(task: str) -> str:
    try:
        return METRICS[task]
    except KeyError:
        raise ValueError(f"task {task!r}: expected one of {', '.join(METRICS)}") from None


def fields(task: str) -> Iterator[tuple[str, Field]]:
    """(key, field) of a `task` summary, in file order, templates expanded."""
    metric = metric_of(task)
    selected = [f for f in FIELDS if f.task in (None, task)]
    i = 0
    while i < len(selected):
        if "{stage}" not in selected[i].key:
            yield selected[i].key.format(metric=metric), selected[i]
            i += 1
            continue
        j = i  # a run of per-stage fields: stage by stage (test_acc_dense, test_acc_dense_exact_subset, ...)
        while j < len(selected) and "{stage}" in selected[j].key:
            j += 1
        for stage in STAGES:
            for f in selected[i:j]:
                yield f.key.format(metric=metric, stage=stage), f
        i = j


def keys(task: str) -> list[str]:
    """Every key a `task` summary can hold, in file order."""
    return [k for k, _ in fields(task)]


def _task_of(summary: dict[str, Any]) -> str:
    return "segmentation" if any(k.startswith("test_miou_") for k in summary) else "classification"


def _type_ok(value: Any, f: Field) -> bool:
    if value is None:
        return f.null
    if isinstance(value, bool) and bool not in f.types:  # JSON true is no number
        return False
    if not isinstance(value, f.types):
        return False
    return not isinstance(value, list) or all(isinstance(v, str) for v in value)


def _check(summary: dict[str, Any], task: str, strict: bool) -> list[str]:
    problems = []
    known = dict(fields(task))
    for key, f in known.items():
        if key not in summary:
            if (f.required and (strict or not f.new)) or (strict and key in _ALWAYS):
                problems.append(f"{key}: missing")
        elif not _type_ok(summary[key], f):
            kinds = "/".join("list of str" if t is list else t.__name__ for t in f.types)
            problems.append(f"{key}={summary[key]!r}: must be {kinds}" + (" or null" if f.null else ""))
    unknown = sorted(k for k in summary if k not in known and not k.startswith("_"))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (src/summary.py lists every key)")
    return problems


def validate(summary: dict[str, Any], task: str | None = None, strict: bool = True) -> None:
    """SummaryError listing every key that breaks the schema. `strict`: as this version writes
    it (every required key); otherwise as any version wrote it (older summaries lack the newer
    keys). Keys starting with '_' (a reader's annotations) are ignored."""
    problems = _check(summary, task or _task_of(summary), strict)
    if problems:
        raise SummaryError("summary does not follow src/summary.py:\n  " + "\n  ".join(problems))


def assemble(task: str, values: dict[str, Any]) -> dict[str, Any]:
    """The summary of a `task` run from `values` (any order): keys in file order; a contract key
    without a value is null, at the end. SummaryError on an unknown, missing or mistyped key."""
    ordered = {k: values[k] for k in keys(task) if k in values}
    for k in keys(task):
        if k in _ALWAYS and k not in ordered:
            ordered[k] = None
    unknown = sorted(set(values) - set(ordered))
    if unknown:
        raise SummaryError(f"unknown summary key(s) {', '.join(unknown)}: add them to src/summary.py FIELDS")
    validate(ordered, task, strict=True)
    return ordered


def write(path: Path, summary: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(summary, indent=2) + "\n")


def load(path: Path) -> dict[str, Any]:
    """A summary.json as a dict, validated (older versions' summaries accepted); SummaryError
    (a ValueError) naming the file otherwise."""
    path = Path(path)
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SummaryError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(summary, dict):
        raise SummaryError(f"{path} does not hold a JSON object")
    try:
        validate(summary, strict=False)
    except SummaryError as e:
        raise SummaryError(f"{path}: {e}") from None
    return summary
