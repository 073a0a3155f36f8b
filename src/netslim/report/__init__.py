"""The report's figures, tables and text, from the stages' outputs already read into DataFrames and dicts.

Nothing here reads or writes files (`netslim.stages.report` does), so every figure and table can be built
and checked in memory. Figures are bare `matplotlib.figure.Figure` objects, not pyplot ones: no GUI backend
and no global figure registry to leak into, and both `savefig` and MLflow's `log_figure` accept them.
Values the stages did not write show as "n/a" rather than failing the report. No torch: the report stage reads
CSV and JSON only. One module per job:

- `inputs`: what the stages wrote (`ReportInputs`), and how a model is named and a number read and printed;
- `summary`: one row per model (summary.csv), the headline metrics, the timings and the curves DVC plots;
- `figures`: the six figures (FIGURES);
- `captions`: what each figure shows in this run, and the sentences under the pruning table;
- `markdown`: report.md.
"""
