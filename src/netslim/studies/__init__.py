"""Studies beside the pipeline (issue 27): was slimming worth it, and how far can it go?

Three experiments and their report, the stages of studies/dvc.yaml (`make study`). One module per job:

- `parts`: the parts' names, their settings (studies/params.yaml) and the JSON and CSV files each part writes;
- `experiments`: controls, the ratio sweep and multi-pass slimming (torch);
- `figures`: the parts' figures;
- `markdown`: reports/studies/README.md.

This file imports none of them: the report's stage imports no torch, and the experiments' stages do not depend on
the figures or the report's text, so a sentence can change without training again.
"""
