"""The loss-weighting and grouping ablations (the paper's Tables 1-5) over seeds, resumable.

``spec``: the variant table and the planned runs; ``regroup``: variants that reuse another run's
Gamma history; ``runner``: one ``train_net.py`` subprocess per (variant, seed), skipped when its
result file exists; ``run_result``: that file; ``statistics``: mean ± std per variant and paired differences
against the references; ``convergence``: how much mAP still moved at the end of each run;
``plots``: the figures; ``tables``: ``ablation.md`` / ``ablation.json`` and the figures.
``tools/ablation.py`` is the command line.
"""
from .regroup import GROUPS_INPUT, galw_group_tasks, regroup_from_run
from .run_result import (METRICS, RESULT_FILE, collect_metrics, metrics_curve, result_data, run_groups,
                         save_result, saved_result, weight_trajectories)
from .runner import dry_run_commands, finished_runs, run_ablation, run_one, subprocess_runner
from .spec import REPO_ROOT, base_config_path, load_spec, plan_runs, schedule_opts, train_command
from .convergence import convergence, run_convergence, variant_convergence
from .statistics import COLUMNS, REFERENCES, aggregate, all_comparisons, mean_std, paired, paired_comparisons
from .tables import comparison_table, convergence_table, markdown_table, write_tables

__all__ = [
    "COLUMNS",
    "GROUPS_INPUT",
    "METRICS",
    "REFERENCES",
    "REPO_ROOT",
    "RESULT_FILE",
    "aggregate",
    "all_comparisons",
    "base_config_path",
    "collect_metrics",
    "comparison_table",
    "convergence",
    "convergence_table",
    "dry_run_commands",
    "finished_runs",
    "galw_group_tasks",
    "load_spec",
    "markdown_table",
    "mean_std",
    "metrics_curve",
    "paired",
    "paired_comparisons",
    "plan_runs",
    "regroup_from_run",
    "result_data",
    "run_ablation",
    "run_groups",
    "run_convergence",
    "run_one",
    "save_result",
    "saved_result",
    "schedule_opts",
    "subprocess_runner",
    "train_command",
    "variant_convergence",
    "weight_trajectories",
    "write_tables",
]
