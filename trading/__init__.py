"""Order intents, sizing, risk limits, the trader and its paper and live execution.

May import core and data; never ml, pipeline, worker, tasks or cli.
"""
