"""`compare`: a grid of backbones x freeze policies x seeds as a study whose trials are its arms.

Each arm is queued once; any number of workers, sharing the storage and a tracking server, pull arms
until none is waiting. A rerun starts only arms not complete with the same config digest. With
`compare.screen`, the backbones are ranked first (freezeframe.rank) and only the best `keep` get the
policies that train the backbone. With `compare.lr`, each arm that trains with an lr runs once per lr, and
the summary reads each at the lr best on validation (pipelines/reports/lr_choice.py).
"""

from __future__ import annotations

import argparse

from freezeframe.rank import screen
from freezeframe.study_run import Grid, experiment_stem, run_arms
from pipelines.config import RunConfig
from pipelines.studies.arms import parse_comparison
from tracking.studies import comparison_report


def compare(args: argparse.Namespace, cfg: RunConfig, sections: dict) -> int:
    spec = parse_comparison(sections.get("compare"), cfg, source=args.experiment)
    name = args.study_name or spec.name
    screened_out: dict[str, str] = {}
    reuse: dict[str, str] = {}  # the ranking's runs, by config digest: arms of the grid that ran already
    if spec.screen is not None:
        spec, screened_out, reuse = screen(args, cfg, spec, name)

    def summarise(parent_run_id: str, runs: list) -> str:
        rows, champion = comparison_report.log_summary(parent_run_id, name, runs, experiment_stem(args.experiment),
                                                       screened_out)
        return comparison_report.markdown(rows, []) + (f"\nbest arm registered as {champion}" if champion else "")

    run_arms(args, cfg, Grid(spec, name, summarise, reuse=reuse))
    return 0
