"""Views of a finished table: plots, the HTML report, the annotated clip, annotation-tool files.

Imports `core`, `media`, `tables` and `scoring`.
"""
