"""Stage 3 of the flow: applying trained models, per-case metrics, tables and figures.

May import :mod:`cmfnet.data` and :mod:`cmfnet.training`. Importing this package imports no torch,
so that ``cmfnet tables`` runs without it.
"""
