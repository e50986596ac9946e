"""The one way to the exchange's REST API: client builders, the shared rate limiter, the retry policy
and the gateway that runs many requests at once on one event loop per process."""
