"""What the report says about what it shows, for a reader new to the project: the notice that
scores are on synthetic data, the score tables' columns, and a caption per figure (what it shows,
never its file name). Plain text from registry entries, no I/O: the workflow passes it to
`vcorr report page` (and Snakemake's report has the same words in workflow/report/*.rst).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# The score tables' columns that need a word (summary.csv, the cross-protocol table).
COLUMN_NOTES: dict[str, str] = {
    "status": "scored locally, or awaiting server evaluation (an archive to upload, no score)",
    "protocol": "the label propagation protocol: crw (CRW / HVC's test pipeline) or stt (Spa-then-Temp's)",
    "settings": ("whose propagation settings the row uses: own = the method's published settings under its own "
                 "protocol; otherwise the reference method of config/protocols.yaml whose settings (and label "
                 "path) the method's features were run with under that protocol"),
    "archive": "the submission archive of a server-scored benchmark",
    "upload_to": "where to upload that archive",
    "result": "the result JSON: every score with its provenance (code version, settings, checkpoints, timings)",
    "note": "why a cell was not evaluated, or a warning about the result",
}


def units_note() -> str:
    """What the `(%)` columns hold, and which scorers write another unit."""
    # Here, not at the top: the workflow's DAG imports this module, and results.py brings numpy.
    from vcorr.report.results import HEADLINES, PERCENT_PER_UNIT

    fractions = [name for scorer, names in HEADLINES.items() if PERCENT_PER_UNIT[scorer] != 1 for name in names]
    return "Every score is in %." + (
        f" {', '.join(fractions)}: the official tool writes a fraction (0-1, as the scores JSON keeps it), shown "
        "here x100." if fractions else "")


def column_notes(columns: Iterable[str]) -> dict[str, str]:
    """The notes of the given columns that have one, in column order."""
    return {column: COLUMN_NOTES[column] for column in columns if column in COLUMN_NOTES}


def synthetic_data_notice(benchmarks: Iterable[str], benchmark_registry: Mapping[str, Any],
                          dataset_registry: Mapping[str, Any]) -> list[str]:
    """One paragraph per dataset that vcorr builds itself (datasets.yaml `built_by`) among the
    benchmarks' datasets: scores on it are not scores on a published benchmark."""
    built: dict[str, list[str]] = {}
    for benchmark in benchmarks:
        dataset = benchmark_registry[benchmark]["dataset"]
        if dataset_registry[dataset].get("built_by"):
            built.setdefault(dataset, []).append(benchmark)
    return [
        f"Synthetic data: {', '.join(names)} {'is not a published benchmark' if len(names) == 1 else 'are not published benchmarks'} "
        f"but a set vcorr builds itself (datasets.yaml {dataset}: {dataset_registry[dataset]['title'].strip()}). "
        "Their scores say whether every stage of the pipeline works and how the methods compare with the "
        "baselines on these videos; they say nothing about the methods' scores on DAVIS, JHMDB or VIP."
        for dataset, names in built.items()
    ]


def scores_caption(protocols: bool) -> str:
    return ("The headline score of every result (in %): a panel per metric, a group of bars per benchmark, a "
            "colour per method" + (", a hatch per propagation protocol" if protocols else "") +
            ". Server-scored benchmarks have no bar.")


# What a training curve shows that looks like failure and is not, per training method.
TRAINING_NOTES: dict[str, str] = {
    "moco": ("MoCo starts with a queue of random vectors, negatives that are trivially told apart from real keys: "
             "its first losses are low and acc@1 high. Once queue_size / batch_size steps have filled the queue "
             "with real keys, the loss sits near chance, ln(queue_size + 1), and acc@1 near 0 — where a MoCo loss "
             "starts, not a divergence; it falls from there over many epochs. A run shorter than that (the demo's "
             "tens of steps) shows only the rise."),
}


def training_caption(model: str, entry: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """The training figure of `model` (its models.yaml entry, its resolved training `settings`):
    what is drawn, and the note of its training method."""
    text = (f"Training of {model} ({entry.get('description') or entry['method']}): the loss terms against the "
            "optimisation step (top), then one panel per other logged term (learning rate, accuracies, images/s).")
    note = TRAINING_NOTES.get(entry["method"])
    if note and {"queue_size", "batch_size"} <= set(settings):
        note += (f" Here: a queue of {settings['queue_size']} keys and batches of {settings['batch_size']}, so the "
                 f"first {settings['queue_size'] // settings['batch_size']} steps fill it.")
    return f"{text} {note}" if note else text


def overlay_caption(benchmark: str, method: str, sequence: str) -> str:
    return (f"{method} on {benchmark}, sequence {sequence}: ground truth (top row) and prediction (bottom row) on "
            "a few frames, each object outlined and tinted in its colour; only the first frame's labels were given.")
