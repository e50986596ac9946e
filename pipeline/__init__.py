"""The minute pipeline's own machinery, free of Celery: the run ledger, the per-minute lock, the
window store between the feature and inference steps, the signal store and outbox, the message
schemas, the publish-once bus and its durable feed, the minute's steps (``steps``) and stages
(``stages``), its start and supervision policy (``minute_service``) and its publish step
(``publish_service``), with the runtimes and ports the task layer fills in (``ports``).

May import ``core``, ``data``, ``ml`` and ``trading``; never ``celery``, ``worker``, ``tasks`` or
``cli``.
"""
