"""The MCP servers ml-data, ml-signal and ml-model (docs/MCP.md): typed, bounded tools over the domain
code, read-only unless ``mcp.allow_write``, mutating calls audited, stdio or HTTP with bearer tokens.
Above ``tasks`` and ``monitoring`` in the layers (``run_minute`` sends a Celery task); never imports
``cli``."""
