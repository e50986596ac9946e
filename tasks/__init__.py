"""Thin Celery tasks, one module per stage; every task has an explicit, stable dotted name.

Logic lives in ``data``, ``ml``, ``trading`` and ``pipeline`` (the minute's service, stages and
publish step, free of Celery); a task body wires its arguments and Celery's ports (the minute's
chord, the orders queue) to those functions.
Arguments and results are small JSON values (symbols, ISO minutes, keys), never DataFrames.
"""
