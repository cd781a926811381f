"""The top layer: what is read from finished outputs. Results with provenance and the summary
(`results`), the cross-protocol table, charts, curves, overlays and the HTML page (`figures`),
and the submission archives of server-scored benchmarks (`submission`). Nothing below imports it.
"""
