"""Thin Celery tasks, one module per stage; every task has an explicit, stable dotted name.

Logic lives in ``data``, ``ml`` and ``trading``; a task body wires arguments to those functions.
Arguments and results are small JSON values (symbols, ISO minutes, keys), never DataFrames.
"""
