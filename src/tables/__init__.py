"""Result tables and plots regenerated from logged runs: ``python -m src.tables --runs DIR --out DIR``.

Reads every ``summary.json`` (and the ``metrics.csv`` beside it) under ``--runs`` and writes, per
dataset present, ``<out>/<dataset>.md`` with, per model: final-epoch test accuracy (mIoU for
segmentation) as mean +- std over seeds (never a best epoch), params / mults / adds of the
decomposed model and their ratios to the dense model, the accuracy change at projection and at
decomposition, and the paper's headline claims beside them; plus PNG plots (accuracy vs MACs;
structural residual and accuracy over training). Output depends only on the runs: running it
twice gives identical files.

The package, one job per module (none imports this ``__init__``):

- ``load``: run loading (`load_runs`, `read_curves`) and grouping into rows (`group_runs`, `config_key`);
- ``fmt``: formatting helpers (mean +- std, paired differences, units, commit cells);
- ``claims`` + ``claims.yaml``: the reproduction's claims as data, measured from a table's rows;
- ``dataset``: the per-dataset table (`dataset_table`);
- ``compare``: the compression comparison, ``compare.md`` (`compare_table`);
- ``length``: the gap against training length (paired gaps per length, the fit g_inf + b / E, its
  bootstrap and extrapolation), a section of the table where asked for (results/long by default);
- ``plots``: every PNG;
- ``readme``: the README's results summary, from the committed tables (``--summary README.md``);
- ``cli``: `write_tables` and the command line (`main`; ``__main__`` runs it).
"""

from .claims import CLAIMS, GAP_CLAIMS, PAPER_CLAIMS
from .cli import main, write_tables
from .compare import LATENCY_FILE, _at_latency, _verdict, compare_table
from .dataset import dataset_table
from .length import study as length_study
from .load import LEGACY_KEYS, config_key, group_runs, load_runs, read_curves
from .plots import plot_acc_vs_macs, plot_compare, plot_gap_vs_epochs, plot_training
from .readme import summary_block, write_summary

__all__ = ["CLAIMS", "GAP_CLAIMS", "PAPER_CLAIMS", "LATENCY_FILE", "LEGACY_KEYS", "main", "write_tables",
           "compare_table", "dataset_table", "config_key", "group_runs", "load_runs", "read_curves",
           "plot_acc_vs_macs", "plot_compare", "plot_gap_vs_epochs", "plot_training", "length_study", "summary_block",
           "write_summary", "_at_latency", "_verdict"]
