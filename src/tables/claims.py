"""The reproduction's claims, as data (``claims.yaml`` beside this file: which models, which allowed
drops, which tolerance), measured from a dataset table's rows and marked holds / fails. No model name
appears in this code: a claim about another pair of models is a line of claims.yaml."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

from .fmt import _paired, _r2, _seeds, _signed
from .load import _recipe, get_entry

DATA_FILE = Path(__file__).with_name("claims.yaml")


@dataclass(frozen=True)
class GapClaim:
    """The decomposed `structured` model within `drop` points of the `dense` one (mean of the
    per-seed gaps over the seeds both have)."""

    label: str
    structured: str
    dense: str
    drop: float


def _load(path: Path = DATA_FILE) -> dict:
    data = yaml.safe_load(path.read_text())
    data["gap"] = tuple(GapClaim(c["label"], c["structured"], c["dense"], float(c["drop"])) for c in data["gap"])
    return data


CLAIMS = _load()
GAP_CLAIMS: tuple[GapClaim, ...] = CLAIMS["gap"]
DECOMPOSITION = CLAIMS["decomposition"]  # claim (c)
DECOMPOSITION_TOLERANCE = float(DECOMPOSITION["tolerance"])  # points of accuracy projection + decomposition may change
DIRECT_ROUTE = CLAIMS["direct_route"]  # claim (d)
PAPER_CLAIMS: str = CLAIMS["paper"]
COMPARE = CLAIMS["compare"]  # compare.md's dense model and from-scratch structured models per target
LENGTH_TAG: str = CLAIMS["length_tag"]  # a tag naming only the run's length keeps the run in the claims
GAP_VS_LENGTH = CLAIMS["gap_vs_length"]  # src/tables/length.py


def _claims_tag(tag: str, s: dict) -> bool:
    """Whether a row tagged `tag` (its first run `s`) is the claims' configuration: untagged, or tagged
    with its length only (claims.yaml `length_tag`); other tags (a sweep's lambdas) are experiments."""
    return not tag or tag == LENGTH_TAG.format(max_epochs=s.get("max_epochs"))


def claim_configs(items: list[tuple]) -> dict[tuple, dict[str, list[dict]]]:
    """(model, route, recipe) -> {configuration: its runs} over the rows the claims may use."""
    by: dict[tuple, dict[str, list[dict]]] = defaultdict(dict)
    for (_, model, route, tag, _, cfg), g in items:
        if _claims_tag(tag, g[0]):
            by[(model, route, _recipe(g[0]))][cfg] = g
    return by


def one_config(by: dict[tuple, dict[str, list[dict]]], model: str, recipe: tuple, route: str = "regularized") -> list[dict]:
    """The runs of `model` in `recipe`, by seed, where the recipe holds one configuration of it (else
    none: two configurations are never mixed)."""
    cfgs = by.get((model, route, recipe), {})
    return sorted(next(iter(cfgs.values())), key=lambda s: s["seed"]) if len(cfgs) == 1 else []


def recipe_order(recipe: tuple) -> tuple:
    """Recipes by profile, then length."""
    return (str(recipe[0]), recipe[2] or 0, str(recipe))


def recipe_text(recipe: tuple) -> str:
    profile, _, epochs, train, _, eval_set = recipe
    return f"{profile or 'custom'}, {epochs} epochs, train {train or 'all'}, eval {eval_set}"


def _tolerance_outcome(outside: list[float]) -> str:
    """Claim (c)'s outcome from the changes beyond the tolerance: a change either way fails it as
    stated, and the outcome says how many runs lost and how many gained."""
    if not outside:
        return "holds"
    losses, gains = sum(v < 0 for v in outside), sum(v > 0 for v in outside)
    if not losses:
        return f"fails as stated: no run loses more than {DECOMPOSITION_TOLERANCE:g}; {gains} {'gain' if gains > 1 else 'gains'} more"
    text = f"fails: {losses} {'runs lose' if losses > 1 else 'run loses'} more than {DECOMPOSITION_TOLERANCE:g}"
    return text + (f", {gains} {'gain' if gains > 1 else 'gains'} more" if gains else "")


def _claims(items: list[tuple], metric: str) -> list[str]:
    """The reproduction's claims, each measured from the rows above and marked holds / fails:
    the gap claims ((a), (b), (e)) the decomposed structured model within a drop of the dense one
    (mean of the per-seed gaps), (c) projection + decomposition changing accuracy by at most the
    tolerance in every regularized run, (d) the regularized route against training the decomposed
    architecture directly (the paper's ablation: regularized better); models, drops and tolerance
    from claims.yaml. Evaluated per recipe (profile, epochs, data: each length of a profile on its
    own); a model with several configurations in one recipe (e.g. two lambdas) is left out, with a
    note, rather than mixed. Rows tagged other than with their length (claims.yaml `length_tag`) are
    experiments, not the claims' configuration. Nothing when the table has no structured model with
    its dense baseline."""
    key = f"test_{metric}_decomposed"
    by = claim_configs(items)
    recipes = sorted({r for _, _, r in by}, key=recipe_order)
    several = len(recipes) > 1
    ambiguous = sorted({f"{m} ({route})" + (f" ({recipe_text(r)})" if several else "")
                        for (m, route, r), cfgs in by.items() if len(cfgs) > 1})
    found: list[tuple[int, str, str]] = []  # (recipe index, claim, "statement | measured | outcome |")
    for i, recipe in enumerate(recipes):

        def get(model, route="regularized"):
            return one_config(by, model, recipe, route)

        gaps_here = False
        for claim in GAP_CLAIMS:
            label, model, dense, drop = claim.label, claim.structured, claim.dense, claim.drop
            diffs = _paired(get(model), get(dense), key)
            if diffs:
                gaps_here = True
                found.append((i, label, f"{model} within {drop:g} point{'s' if drop != 1 else ''} of {dense} "
                                        f"| {_signed(diffs)} ({_seeds(len(diffs))}) "
                                        f"| {'holds' if _r2(statistics.mean(diffs)) >= -drop else 'fails'} |"))
        model = DIRECT_ROUTE["model"]
        diffs = _paired(get(model), get(model, "direct"), key)
        if diffs:
            mean = _r2(statistics.mean(diffs))
            noise = " (within the seeds' spread)" if len(diffs) > 1 and abs(mean) <= statistics.stdev(diffs) else ""
            found.append((i, DIRECT_ROUTE["label"], f"{model}: the regularized route beats training the decomposed "
                                  f"architecture directly | {_signed(diffs)} ({_seeds(len(diffs))}){noise} "
                                  f"| {'holds' if mean > 0 else 'fails' if mean < 0 else 'fails (a tie)'} |"))
        runs = [s for (m, route, r), cfgs in sorted(by.items(), key=lambda kv: str(kv[0]))
                if r == recipe and route == "regularized" and get_entry(m).variant
                for _, g in sorted(cfgs.items()) for s in g]
        if runs and gaps_here:
            change = [(_r2(s[key] - s[f"test_{metric}_dense"]), s["model"], s["seed"]) for s in runs]
            worst = max(change, key=lambda c: abs(c[0]))
            outside = [c[0] for c in change if abs(c[0]) > DECOMPOSITION_TOLERANCE]
            exact = max(abs(s[key] - s[f"test_{metric}_projected"]) for s in runs)
            found.append((i, DECOMPOSITION["label"], f"projection + decomposition changes accuracy by at most "
                                  f"{DECOMPOSITION_TOLERANCE:g} points in every regularized run | largest change "
                                  f"{worst[0]:+.2f} ({worst[1]} seed {worst[2]}); {len(outside)} of {len(change)} "
                                  f"runs outside; decomposed minus projected at most {exact:.2f} "
                                  f"| {_tolerance_outcome(outside)} |"))
    if not found:
        return []

    def where(i: int) -> str:  # which recipe, where the table holds several
        return f" ({recipe_text(recipes[i])})" if several else ""

    rows = [f"| ({c}){where(i)} | {text}" for i, c, text in sorted(found, key=lambda f: (f[0], f[1]))]
    note = (["", f"Left out of the claims: {', '.join(ambiguous)}, which the table holds in more than one "
             f"configuration of one recipe (see the rows' hashes)."] if ambiguous else [])
    return ["", "## Claims", "",
            "Measured from the rows above (decomposed models on the primary set, final epoch; differences "
            "paired by seed: mean +- std). A gap claim holds when the mean gap, as shown, is no worse than the "
            "allowed drop; (c) counts every regularized structured run (trained -> projected -> decomposed).", "",
            "| claim | statement | measured | outcome |", "|---|---|---|---|", *rows, *note]


