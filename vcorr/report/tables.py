"""A table of config/published.yaml (`results/tables/<name>.csv`): one row per cell of
`vcorr.report.published.table_cells`, with vcorr's number, the published one and their difference
for every metric, and where the published number comes from.

Columns: benchmark, method, protocol, settings (own, or the reference method whose settings a
`<method>@<protocol>` cell takes), status; then per metric `<metric>` (vcorr's, in percent as papers
print it), `<metric> published` and `<metric> difference` (vcorr's minus the published, in points);
then source (the published number's), source_url, result (vcorr's result JSON) and note (why a
cell is not evaluated). The metrics are the headlines of the table's locally scored benchmarks,
then any other metric a published number uses (e.g. YouTube-VOS's overall score).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vcorr.evaluation.cross_protocol import Cell
from vcorr.report.cross_protocol_table import CELL_COLUMNS, cell_rows
from vcorr.report.published import numbers
from vcorr.report.results import HEADLINES, headline_column, write_table

DECIMALS = 2


def write_published_table(cells: Sequence[Cell], published: dict[str, Any], methods: dict[str, Any],
                          benchmarks: dict[str, Any], result_files: Sequence[Path], out: Path) -> dict[str, int]:
    """Write the table; {"rows", "evaluated", "published", "compared"} counts."""
    rows, _ = cell_rows(cells, result_files, out)
    by_cell = {(number.method, number.benchmark, number.protocol): number for number in numbers(published, methods)}
    sources = published.get("sources") or {}
    metrics: list[str] = []
    for benchmark in dict.fromkeys(cell.benchmark for cell in cells):
        metrics += [name for name in HEADLINES.get(benchmarks[benchmark]["scorer"], ()) if name not in metrics]
    for number in by_cell.values():
        metrics += [name for name in number.values if name not in metrics]
    counts = {"rows": len(rows), "evaluated": 0, "published": 0, "compared": 0}
    for row, cell in zip(rows, cells):
        number = by_cell.get((cell.method, cell.benchmark, cell.protocol))
        counts["evaluated"] += cell.evaluated_as is not None
        counts["published"] += number is not None
        compared = False
        for metric in metrics:
            # The summary's rows hold each headline in percent, under its column with the unit.
            ours = row.pop(headline_column(metric), None)
            if ours not in (None, ""):
                ours = row[metric] = round(float(ours), DECIMALS)
            theirs = number.values.get(metric) if number else None
            if theirs is not None:
                row[f"{metric} published"] = theirs
                if ours not in (None, ""):
                    row[f"{metric} difference"] = round(ours - theirs, DECIMALS)
                    compared = True
        counts["compared"] += compared
        if number:
            row.update(source=sources[number.source]["title"], source_url=sources[number.source]["url"])
    columns = ["benchmark", "method", *CELL_COLUMNS[:2], "status"]
    columns += [column for metric in metrics for column in (metric, f"{metric} published", f"{metric} difference")]
    columns += ["source", "source_url", "result", CELL_COLUMNS[2]]
    write_table(out, columns, rows)
    return counts
