"""Reports of hcld-bids: QC metrics, participant report, group QC report and table, methods boilerplate.

- :mod:`.metrics`: histograms, Wasserstein distances and the anatomy guard (the sidecar ``QC`` block);
- :mod:`.participant`: ``OUTPUT_DIR/sub-<label>.html`` and ``sub-<label>/figures/``;
- :mod:`.group`: ``OUTPUT_DIR/group_T1w.tsv`` and ``group_report.html``;
- :mod:`.boilerplate`: ``OUTPUT_DIR/logs/CITATION.{md,bib,html}``.

The reports read only files in OUTPUT_DIR (see :mod:`.outputs`), never the model.
"""
