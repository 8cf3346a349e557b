"""Numbers against truth: CCC, Pearson, RMSE, accuracy, F1, truth tables, training runs side by side.

Imports `core`, `datasets` and `tables`.
"""
