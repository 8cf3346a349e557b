"""Labelled data on disk (AFEW-VA, Aff-Wild2), the features cached from it, training windows, splits.

Imports `core`, `media`, `nets` and `tables`.
"""
