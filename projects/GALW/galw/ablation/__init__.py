"""The loss-weighting and grouping ablations (the paper's Tables 1-5) over seeds, resumable.

``spec``: the variant table and the planned runs; ``regroup``: variants that reuse another run's
Gamma history; ``search``: the static weights tried on a validation split for ``tuned_static``;
``data``: SynthPS per data seed; ``runner``: one ``train_net.py`` subprocess per (variant, seed),
skipped when its result file exists; ``process``: how that subprocess is started;
``run_result``: that file (and its copy for committing);
``statistics``: mean ± std per variant and paired differences against the references;
``claims``: the paper's differences between variants checked in direction;
``answer``: the few lines that answer the study's question on a dataset;
``convergence``: how much mAP still moved at the end of each run;
``plots``: the figures; ``tables``: ``ablation.md`` / ``ablation.json`` and the figures;
``report``: the same from the kept result files alone, for ``--report`` and the docs;
``conclusion``: the study's answer and the paper's claims across its datasets, for the docs.
``tools/ablation.py`` is the command line.
"""
from .regroup import GROUPS_INPUT, galw_group_tasks, regroup_from_run
from .data import apply_dataset, check_kept_draw, dataset_root, prepare_dataset, select_dataset, source_spec
from .run_result import (METRICS, RESULT_FILE, collect_metrics, committed_result, keep_copy, metrics_curve,
                         result_data, run_groups, save_result, saved_result, weight_trajectories)
from .process import run_threads, subprocess_runner
from .runner import borrowed_search, dry_run_commands, finished_runs, run_ablation, run_one, run_search
from .search import SEARCH_DIR, choose, plan_search, weights_text
from .spec import (REPO_ROOT, TUNED_WEIGHTS, base_config_chain, base_config_path, config_fingerprint, load_spec,
                   plan_runs, schedule_opts, train_command, variant_seeds)
from .answer import ANSWER_PAIRS, answer_markdown, pair_verdict
from .claims import check_claims, claims_table
from .convergence import convergence, run_convergence, variant_convergence
from .statistics import (COLUMNS, REFERENCES, aggregate, all_comparisons, mean_std, paired, paired_by_name,
                         paired_comparisons)
from .tables import comparison_table, convergence_table, groups_table, markdown_table, report_markdown, write_tables
from .report import SHIPPED_SPEC, committed_outcome, docs_markdown, label_dataset
from .conclusion import claim_summary, conclusion_markdown, dataset_reports

__all__ = [
    "ANSWER_PAIRS",
    "COLUMNS",
    "GROUPS_INPUT",
    "METRICS",
    "REFERENCES",
    "REPO_ROOT",
    "RESULT_FILE",
    "SEARCH_DIR",
    "SHIPPED_SPEC",
    "TUNED_WEIGHTS",
    "aggregate",
    "all_comparisons",
    "apply_dataset",
    "check_kept_draw",
    "answer_markdown",
    "base_config_chain",
    "base_config_path",
    "borrowed_search",
    "check_claims",
    "choose",
    "claim_summary",
    "claims_table",
    "collect_metrics",
    "committed_outcome",
    "committed_result",
    "config_fingerprint",
    "comparison_table",
    "conclusion_markdown",
    "convergence",
    "convergence_table",
    "dataset_reports",
    "dataset_root",
    "docs_markdown",
    "dry_run_commands",
    "finished_runs",
    "galw_group_tasks",
    "groups_table",
    "keep_copy",
    "label_dataset",
    "load_spec",
    "markdown_table",
    "mean_std",
    "metrics_curve",
    "pair_verdict",
    "paired",
    "paired_by_name",
    "paired_comparisons",
    "plan_runs",
    "plan_search",
    "prepare_dataset",
    "regroup_from_run",
    "report_markdown",
    "result_data",
    "run_ablation",
    "run_convergence",
    "run_groups",
    "run_one",
    "run_search",
    "run_threads",
    "save_result",
    "saved_result",
    "schedule_opts",
    "select_dataset",
    "source_spec",
    "subprocess_runner",
    "train_command",
    "variant_convergence",
    "variant_seeds",
    "weight_trajectories",
    "weights_text",
    "write_tables",
]
