"""Datasets in: read files, detect and normalize formats, render with a chat template + loss mask.

Modules: `io` (read files into rows), `formats` (detect + normalize into canonical records),
`templates` (render + loss mask: the one function the preview and the trainer share), `stats`
(token statistics), `store` (saved datasets under STUDIO_HOME/datasets), `check` (the report
behind the Data tab and `python -m studio data check`). Knows nothing about trainers or the UI.
"""
