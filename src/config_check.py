"""Validate a training command before any work: its overrides against the configuration (a
mistyped experiment or key: one line naming the nearest valid names, :func:`check_command_line`),
then every value the code reads, with the key, the value and what is allowed in the message (all
problems at once, :func:`validate`). Imports nothing heavier than Hydra."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

__all__ = ["ConfigError", "validate", "check_command_line"]

PROGRESS_BARS = ("rich", "simple", "none")
ROUTES = ("regularized", "direct")
OPTIMIZERS = ("sgd", "adamw", "rmsprop")
SCHEDULES = ("cosine", "steps", "poly", "exp")
DOWNLOAD = ("auto", "true", "false")


class ConfigError(ValueError):
    """One or more configuration values are out of range."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(lo: int | None = None, hi: int | None = None, null: bool = False) -> Callable[[Any], str | None]:
    def check(v):
        if v is None and null:
            return None
        if not _is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            return f"an integer {rng}" + (" or null" if null else "")
        return None
    return check


def _num(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    def check(v):
        bad = not _is_num(v) or v != v  # NaN
        if not bad and lo is not None:
            bad = v <= lo if lo_open else v < lo
        if not bad and hi is not None:
            bad = v >= hi if hi_open else v > hi
        if bad:
            parts = []
            if lo is not None:
                parts.append(f"{'>' if lo_open else '>='} {lo:g}")
            if hi is not None:
                parts.append(f"{'<' if hi_open else '<='} {hi:g}")
            return "a number " + " and ".join(parts) if parts else "a number"
        return None
    return check


def _or_null(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def or_null(v):
        problem = None if v is None else check(v)
        return problem and problem + " or null"
    return or_null


def _enum(*allowed: str):
    def check(v):
        return None if str(v).lower() in allowed and not isinstance(v, (dict, list)) else f"one of {', '.join(allowed)}"
    return check


def _bool(v):
    return None if isinstance(v, bool) else "true or false"


def _path(v):
    return None if isinstance(v, str) and v.strip() else "a file path (string) or null"


def _method(v):
    if v is None:
        return None
    from src.compress import METHODS

    return None if v in METHODS else f"one of {', '.join(METHODS)} or null"


# key -> check; a key absent from the config (another dataset's or optimizer's) is skipped.
CHECKS: dict[str, Callable[[Any], str | None]] = {
    "seed": _int(0),
    "trainer.max_epochs": _int(1),
    "trainer.progress_bar": _enum(*PROGRESS_BARS),
    "trainer.log_every_n_steps": _int(1),
    "trainer.check_val_every_n_epoch": _int(1),
    "trainer.num_sanity_val_steps": _int(-1),
    "trainer.deterministic": _bool,
    "structure.route": _enum(*ROUTES),
    "structure.lam": _num(0.0),
    "structure.lam_ramp_epochs": _num(0.0),
    "structure.bn_recalib": _bool,
    "structure.bn_recalib_batches": _int(1),
    "structure.decompose_tol": _num(0.0, lo_open=True),
    "model.channels_last": _bool,
    "model.init_from": _or_null(_path),
    "model.pretrained": _bool,
    "model.compress.method": _method,
    "model.compress.mults_ratio": _or_null(_num(0.0, 1.0, lo_open=True)),
    "data.batch_size": _int(1),
    "data.eval_batch_size": _int(1),
    "data.train_subset": _int(1, null=True),
    "data.test_subset": _int(1, null=True),
    "data.val_subset": _int(1, null=True),
    "data.num_workers": _int(0),
    "data.image_size": _int(8),
    "data.val_resize": _int(8),
    "data.download": _enum(*DOWNLOAD),
    "optim.name": _enum(*OPTIMIZERS),
    "optim.schedule": _enum(*SCHEDULES),
    "optim.lr": _num(0.0, lo_open=True),
    "optim.lr_per_256": _num(0.0, lo_open=True),
    "optim.momentum": _num(0.0, 1.0, hi_open=True),
    "optim.weight_decay": _num(0.0),
    "optim.warmup_epochs": _num(0.0),
    "optim.gamma": _num(0.0, 1.0, lo_open=True),
    "optim.power": _num(0.0, lo_open=True),
    "optim.eps": _num(0.0, lo_open=True),
    "optim.decay_every_epochs": _num(0.0, lo_open=True),
    "optim.nesterov": _bool,
    "optim.ema_decay": _or_null(_num(0.0, 1.0, hi_open=True)),
    "eval.official_test": _bool,
    "eval.robustness": _bool,
    "logger.wandb": _bool,
    "logger.offline": _bool,
}


def _get(container: dict, key: str):
    node = container
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _model_problems(c: dict) -> list[str]:
    """model.init_from / model.pretrained / model.compress.* against each other and the model."""
    problems = []
    init_from, pretrained = _get(c, "model.init_from"), _get(c, "model.pretrained")
    if init_from not in (_MISSING, None) and pretrained is True:
        problems.append(f"model.init_from={init_from!r} and model.pretrained=true: choose one")
    method, ratio = _get(c, "model.compress.method"), _get(c, "model.compress.mults_ratio")
    method = None if method is _MISSING else method
    ratio = None if ratio is _MISSING else ratio
    if method is not None and ratio is None:
        problems.append(f"model.compress.mults_ratio=null: model.compress.method={method!r} needs a target "
                        f"(a number in (0, 1])")
    if method is None and ratio is not None:
        problems.append(f"model.compress.mults_ratio={ratio!r}: set model.compress.method too (or leave both null)")
    if method is not None:
        name, rules, route = _get(c, "model.name"), _get(c, "structure.rules"), _get(c, "structure.route")
        if isinstance(name, str) and name.startswith("struct_"):
            problems.append(f"model.compress.method={method!r} with model.name={name}: compression starts from the "
                            f"dense model (use model.name={name.removeprefix('struct_')[:-2]})")
        if rules not in (_MISSING, None, []):
            problems.append(f"model.compress.method={method!r} with structure rules: use one or the other")
        if route == "direct":
            problems.append(f"model.compress.method={method!r} with structure.route=direct: compression fine-tunes "
                            f"the given weights (structure.route=regularized)")
    return problems


def validate(cfg: DictConfig | dict) -> None:
    """Raise ConfigError listing every out-of-range value (key, value, what is allowed)."""
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    problems = []
    for key, check in CHECKS.items():
        value = _get(c, key)
        if value is _MISSING:
            continue
        allowed = check(value)
        if allowed:
            problems.append(f"{key}={value!r}: must be {allowed}")
    epochs, warmup = _get(c, "trainer.max_epochs"), _get(c, "optim.warmup_epochs")
    if _is_int(epochs) and _is_num(warmup) and epochs >= 1 and warmup >= epochs:
        problems.append(f"optim.warmup_epochs={warmup!r}: must be below trainer.max_epochs={epochs}")
    crop = _get(c, "data.crop_size")
    if crop is not _MISSING and not (isinstance(crop, list) and len(crop) == 2 and all(_is_int(v) and v >= 8 for v in crop)):
        problems.append(f"data.crop_size={crop!r}: must be [height, width], integers >= 8")
    scale = _get(c, "data.scale_range")
    if scale is not _MISSING and not (isinstance(scale, list) and len(scale) == 2 and all(_is_num(v) for v in scale)
                                      and 0 < scale[0] <= scale[1]):
        problems.append(f"data.scale_range={scale!r}: must be [low, high] with 0 < low <= high")
    eval_set, holdout, n_train = _get(c, "data.eval_set"), _get(c, "data.holdout"), _get(c, "data.train_subset")
    if eval_set not in (_MISSING, "test", "holdout"):
        problems.append(f"data.eval_set={eval_set!r}: must be 'test' (the official test set) or 'holdout' "
                        f"(training images data.holdout=[start, end), never trained on)")
    if eval_set == "holdout":
        if not (isinstance(holdout, list) and len(holdout) == 2 and all(_is_int(v) for v in holdout)
                and 0 < holdout[0] < holdout[1]):
            problems.append(f"data.holdout={None if holdout is _MISSING else holdout!r}: with data.eval_set=holdout "
                            f"it must be [start, end), integers with 0 < start < end")
        elif _is_int(n_train) and n_train > holdout[0]:
            problems.append(f"data.train_subset={n_train}: overlaps data.holdout={holdout}; training uses the "
                            f"first train_subset images, so it must be <= {holdout[0]}")
    problems += _model_problems(c)
    milestones = _get(c, "optim.milestones")
    if milestones is not _MISSING and (not isinstance(milestones, list) or not all(_is_num(m) and m > 0 for m in milestones)):
        problems.append(f"optim.milestones={milestones!r}: must be a list of positive epoch numbers")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


# ----------------------------------------------------------------------------- the command line
def _nearest(word: str, names: list[str], cutoff: float = 0.6) -> list[str]:
    return difflib.get_close_matches(word, names, n=3, cutoff=cutoff)


def _options(conf: Path, group: str) -> list[str]:
    """The options of config group `group` (``conf/<group>/**/*.yaml``, relative, without suffix)."""
    return sorted(p.relative_to(conf / group).with_suffix("").as_posix() for p in (conf / group).rglob("*.yaml"))


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    keys = []
    for k, v in node.items():
        keys.append(f"{prefix}{k}")
        keys += _flat_keys(v, f"{prefix}{k}.")
    return keys


def _compose(conf: Path, config_name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            return compose(config_name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def _unknown_key(arg: str, key: str, conf: Path, config_name: str, groups: list[str]) -> str:
    """The message for an override of a key the configuration does not have: its nearest keys (or
    the keys where it was looked for)."""
    cfg = OmegaConf.to_container(_compose(conf, config_name, groups), resolve=False)
    keys = _flat_keys(cfg)
    near = _nearest(key, keys, cutoff=0.8)
    if near:
        return f"{arg}: no key {key} in the configuration; nearest: {', '.join(near)}"
    parts = key.split(".")
    parent = next((".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1) if ".".join(parts[:i]) in keys), "")
    node = cfg
    for part in parent.split(".") if parent else []:
        node = node[part]
    here = sorted(k for k in node) if isinstance(node, dict) else []
    where = f"{parent} has" if parent else "the top level has"
    return f"{arg}: no key {key} in the configuration ({where}: {', '.join(here)})"


def check_command_line(args: list[str], conf: Path, config_name: str = "train") -> str | None:
    """None when Hydra composes `args` (src.train's command-line overrides); else one line naming the
    override that does not fit and the nearest valid names: a mistyped experiment or config group
    option (``+exp=cifar10/struct_resnt20_a``), key (``trainer.max_epoch=1``) or syntax. Arguments
    that are Hydra's own flags (``--help``, ``-m``, ``--cfg``...) are left to Hydra."""
    if any(a.startswith("-") for a in args):
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException, HydraException

    parser = OverridesParser.create()
    parsed = []
    for arg in args:
        try:
            parsed.append((arg, parser.parse_override(arg)))
        except HydraException as e:  # (OverrideParseException, or the grammar's own)
            return f"{arg}: not an override key=value ({str(e).splitlines()[0]})"
    groups = []  # the config group choices, checked against conf/<group>/
    for arg, o in parsed:
        group = o.key_or_group
        if group.startswith("hydra") or not (conf / group).is_dir() or o.is_delete():
            continue
        value = o.value()
        if not isinstance(value, str):
            continue
        options = _options(conf, group)
        if value not in options:
            what = "experiment" if group == "exp" else f"{group} option"
            near = _nearest(value, options) or options[:8]
            return (f"{arg}: no {what} {value!r} (conf/{group}/{value}.yaml); "
                    f"{'nearest' if _nearest(value, options) else 'some of them'}: {', '.join(near)}")
        groups.append(arg)
    try:
        _compose(conf, config_name, list(args))
    except ConfigCompositionException as e:
        msg = str(e)
        for arg, o in parsed:
            key = o.key_or_group
            if f"Could not override '{key}'" in msg and "No match in the defaults list" in msg:
                return f"{arg}: {key} is not chosen by default, so it is added: +{arg}"
            if f"Could not override '{key}'" in msg:
                return _unknown_key(arg, key, conf, config_name, groups)
            if f"An item is already at '{key}'" in msg:
                return f"{arg}: {key} is already in the configuration: set it without the +, {arg.lstrip('+')}"
            if f"'{key}' does not exist" in msg:
                return _unknown_key(arg, key, conf, config_name, groups).replace(" in the configuration", " to delete")
        return msg.splitlines()[0]
    except HydraException as e:
        return str(e).splitlines()[0]
    return None
