"""The floor every layer stands on: errors, atomic files, the label scale, devices, process settings.

Imports nothing else of fercli.
"""
