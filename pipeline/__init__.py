"""The minute pipeline's own machinery, free of Celery: the run ledger, the per-minute lock, the
window store between the feature and inference steps, the signal store and outbox, the message
schemas, the publish-once bus and its durable feed, and the minute's steps and service.

May import ``core``, ``data``, ``ml`` and ``trading``; never ``worker``, ``tasks`` or ``cli``.
"""
