"""The annotation job: what it takes and gives (`contract`), its stages, where they run, `pipeline.annotate`.

Imports `core`, `media`, `nets` and `tables`; `benchmark` times the job itself.
"""
