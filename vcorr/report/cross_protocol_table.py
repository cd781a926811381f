"""The cross-protocol table: one row per (benchmark, method, protocol) cell of
`vcorr.evaluation.cross_protocol.cross_protocol_cells`, with the scores of the cell's result."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vcorr.errors import VcorrError
from vcorr.evaluation.cross_protocol import Cell
from vcorr.report.results import SUMMARY_FIXED, SUMMARY_TAIL, summary_rows, write_table

# The table's columns beyond the summary's that describe a cell rather than measure it.
CELL_COLUMNS = ("protocol", "settings", "note")


def cell_rows(cells: Sequence[Cell], result_files: Sequence[Path], out: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per cell (benchmark, method, protocol, settings, status, the scores and `result` of
    its evaluated method's result JSON, or the reason it is not evaluated in `note`) and the metric
    columns in order of appearance. A cell whose result is not among `result_files`, or a result no
    cell asks for, is an error."""
    _, rows = summary_rows(result_files)
    by_pair = {(row["benchmark"], row["method"]): row for row in rows}
    wanted = {(cell.benchmark, cell.evaluated_as) for cell in cells if cell.evaluated_as}
    extra = sorted(set(by_pair) - wanted)
    if extra:
        raise VcorrError(f"{by_pair[extra[0]]['result']}: result of {extra[0][1]} on {extra[0][0]} is no cell of the table")
    metrics: list[str] = []
    table = []
    for cell in cells:
        row = {"benchmark": cell.benchmark, "method": cell.method, "protocol": cell.protocol, "settings": cell.settings}
        if cell.evaluated_as is None:
            row.update(status="not evaluated", note=cell.note)
        else:
            found = by_pair.get((cell.benchmark, cell.evaluated_as))
            if found is None:
                raise VcorrError(f"{out}: no result given for {cell.evaluated_as} on {cell.benchmark}")
            row.update({key: value for key, value in found.items() if key not in ("benchmark", "method")})
            metrics += [key for key in found if key not in (*SUMMARY_FIXED, *SUMMARY_TAIL, *metrics)]
        table.append(row)
    return table, metrics


def write_cross_protocol_table(cells: Sequence[Cell], result_files: Sequence[Path], out: Path) -> int:
    """The table: one row per cell, scores from the result JSON of its evaluated method (`vcorr
    report result`), an empty score and the reason for a cell that cannot be evaluated."""
    table, metrics = cell_rows(cells, result_files, out)
    columns = ["benchmark", "method", *CELL_COLUMNS[:2], "status", *metrics, "result", CELL_COLUMNS[2]]
    return write_table(out, columns, table)
