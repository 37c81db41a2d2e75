"""The README's results summary: one line per claim with its evidence and profile, read from the
committed generated tables (claims.yaml `summary`: the Claims and gap-against-length sections of
``results/<profile>/cifar10.md``, the verdicts of ``compare.md``, the robustness rows), which a test
regenerates byte for byte from the committed run logs. ``python -m src.tables --summary README.md``
writes it between the lines `START` and `END`; nothing is typed by hand."""

from __future__ import annotations

import math
import re
from pathlib import Path

from src.provenance import REPO_ROOT

from .claims import CLAIMS, GAP_CLAIMS

START = "<!-- results-summary:start -->"
END = "<!-- results-summary:end -->"
RESULTS = REPO_ROOT / "results"


def _section(text: str, title: str) -> list[str]:
    """The table rows ('| ...') of the section `## title` of a generated table."""
    if f"\n## {title}\n" not in text:
        return []
    body = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("|---")]


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split(" | ")]


def _where(rel: str, profile: str, epochs: str) -> str:
    return f"[{profile}](results/{rel}), {epochs} epochs"


def _table_facts(text: str) -> tuple[str, str]:
    """(profiles, epochs) of a dataset table with one recipe: its header's profiles and the main
    table's epochs column."""
    profiles = re.search(r"Profile\(s\): ([^.]+)\.", text)
    rows = [_cells(line) for line in text.split("\n## ", 1)[0].splitlines() if line.startswith("| ")]
    head = rows[0] if rows else []
    epochs = sorted({r[head.index("epochs")] for r in rows[2:]}, key=int) if "epochs" in head else []
    return (profiles.group(1) if profiles else "?"), "/".join(epochs) or "?"


def _claim_rows(rel: str, text: str) -> list[tuple[tuple, str]]:
    """((claim, length), row) of a table's Claims section and of its gap-against-length fits."""
    profile, epochs = _table_facts(text)
    out = []
    for row in _section(text, "Claims")[1:]:
        m = re.match(r"\((\w)\)(?: \((.+)\))?$", _cells(row)[0])
        if not m:
            continue
        label, recipe = m.groups()
        statement, measured, outcome = _cells(row)[1:4]
        where_profile, where_epochs = profile, epochs
        if recipe:  # "long, 30 epochs, train 45000, eval train[45000:50000]"
            where_profile, where_epochs = recipe.split(", ")[0], recipe.split(", ")[1].split(" ")[0]
        claim = next((c for c in GAP_CLAIMS if c.label == label), None)
        if claim is not None:  # a gap claim at a budget: holds there, or is not shown there
            outcome = (f"holds at {where_epochs} epochs" if outcome == "holds" else
                       f"not shown at {where_epochs} epochs (more than {claim.drop:g} point"
                       f"{'s' if claim.drop != 1 else ''} behind)")
        order = (label, int(where_epochs) if where_epochs.isdigit() else 0)
        out.append((order, f"| ({label}) {statement} | {measured} | {_where(rel, where_profile, where_epochs)} "
                           f"| {outcome} |"))
    fits = _section(text, "Gap against training length")
    for row in fits:
        cells = _cells(row)
        if len(cells) == 6 and re.fullmatch(r"\(\w\)", cells[0]) and cells[1] != "lengths":
            label, lengths, points, g_inf, b, at = cells
            claim = next((c for c in GAP_CLAIMS if f"({c.label})" == label), None)
            name = f"{label} {claim.structured} - {claim.dense}" if claim else label
            extrapolate = CLAIMS["gap_vs_length"]["extrapolate_to"]
            where = f"[{profile} and the folders its table names](results/{rel}), {lengths} epochs"
            order = (label.strip("()"), math.inf)
            if g_inf.startswith("not enough lengths"):
                out.append((order, f"| {name}: gap against training length | {g_inf} | {where} | - |"))
            else:
                out.append((order, f"| {name}: gap against training length, fit g_inf + b / E | g_inf {g_inf}; "
                                   f"at {extrapolate} epochs {at} ({points} pairs; +- bootstrap std [95 % interval]) "
                                   f"| {where} | extrapolation beyond the longest run, not a measurement |"))
    return out


def _compare_rows(rel: str, text: str) -> list[str]:
    epochs = re.search(r"then fine-tunes (\S+) epochs", text)
    where = f"[{rel}](results/{rel})" + (f", fine-tuned {epochs.group(1)} epochs" if epochs else "")
    out = []
    rows = [_cells(r) for r in _section(text, "Verdict at equal multiplications")[1:]]
    if rows:
        wins = [r for r in rows if r[4] == "structured"]
        out.append("| structured at least as accurate as pruning / SVD at equal multiplications "
                   f"| structured more accurate in {len(wins)} of {len(rows)} comparisons"
                   + "".join(f"; {r[0]}, {r[1]} vs {r[2]}: {r[3]}" for r in wins)
                   + f"; the baseline in {sum(r[4] not in ('structured', 'tie') for r in rows)}"
                   + f" | {where} | {_tally(len(wins), len(rows))} |")
    rows = [_cells(r) for r in _section(text, "Verdict at equal measured latency")[1:]]
    if rows:
        none = [r for r in rows if r[8].startswith("no comparison")]
        dense = [r for r in rows if r[8].startswith("the dense model")]
        wins = [r for r in rows if r[8] == "structured"]
        compared = len(rows) - len(none)
        out.append("| structured at least as accurate as pruning / SVD at equal measured latency "
                   f"| structured more accurate in {len(wins)} of {compared} comparable rows"
                   + "".join(f"; {r[0]}, {r[1]}, batch {r[2]} vs {r[5]}: {r[6]}" for r in wins)
                   + f"; the baseline in {compared - len(wins) - len(dense) - sum(r[8] == 'tie' for r in rows)}"
                   + (f"; the dense model in {len(dense)}" if dense else "")
                   + f"; {len(none)} rows not comparable (structured faster than every point of the baseline) "
                   f"| {where} | {_tally(len(wins), compared)} |")
    return out


def _tally(wins: int, total: int) -> str:
    return "holds" if total and wins == total else "fails" if wins == 0 else f"mixed: {wins} of {total}"


def _robustness_rows(rel: str, text: str) -> list[str]:
    rows = [_cells(r) for r in _section(text, "Robustness (final models, primary set)")]
    if not rows:
        return []
    head, body = rows[0], rows[1:]
    kinds = [h for h in head if h.startswith("d(")]
    by_model = {r[0]: r for r in body if r[1] == "regularized"}
    profile, epochs = _table_facts(text)
    out = []
    for c in GAP_CLAIMS:
        mine, dense = by_model.get(c.structured), by_model.get(c.dense)
        if not mine or not dense:
            continue
        pairs = [(k[2:-1], mine[head.index(k)].split(" ")[0], dense[head.index(k)].split(" ")[0]) for k in kinds]
        less = sum(float(m) > float(d) for _, m, d in pairs)
        out.append(f"| (robustness, not a paper claim) accuracy change from clean under corruption, {c.structured} "
                   f"vs {c.dense} | " + ", ".join(f"{k} {m} vs {d}" for k, m, d in pairs)
                   + f" | {_where(rel, profile, epochs)} | structured loses less in {less} of {len(pairs)} |")
    return out


def summary_block(results: Path = RESULTS) -> str:
    """The lines between the markers: a markdown table, one row per claim and length (its evidence, and
    the profile and table it comes from), then the gap-against-length fits, the comparison with pruning
    and SVD, and robustness."""
    spec = CLAIMS["summary"]
    claims: list[tuple[tuple, str]] = []
    rows: list[str] = []

    def tables(kind: str):
        for rel in spec.get(kind, []):
            path = Path(results) / rel
            if path.exists():
                yield rel, path.read_text()

    for rel, text in tables("claims"):
        claims += _claim_rows(rel, text)
    rows += [row for _, row in sorted(claims, key=lambda c: c[0])]  # per claim, by length (stable: file order)
    for rel, text in tables("compare"):
        rows += _compare_rows(rel, text)
    for rel, text in tables("robustness"):
        rows += _robustness_rows(rel, text)
    if not rows:
        raise FileNotFoundError(f"no generated table under {results} ({', '.join(spec['claims'])}): run make tables first")
    return "\n".join(["| claim | evidence | profile | outcome |", "|---|---|---|---|", *rows]) + "\n"


def write_summary(path: Path, results: Path = RESULTS) -> str:
    """Replace the lines between START and END in `path` with `summary_block`; the text written."""
    text = Path(path).read_text()
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise ValueError(f"{path} has no '{START}' ... '{END}' lines to write the summary between")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    new = f"{before}{START}\n{summary_block(results)}{END}{after}"
    Path(path).write_text(new)
    return new


def block_in(path: Path) -> str | None:
    """What `path` holds between the markers (None without them)."""
    text = Path(path).read_text()
    if START not in text or END not in text:
        return None
    return text.split(START, 1)[1].split(END, 1)[0].removeprefix("\n")
