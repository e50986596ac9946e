"""ML: feature spec and engine, scaler, model, training, registry, decoding.

May import core and data; never trading, pipeline, worker, tasks or cli.
"""
