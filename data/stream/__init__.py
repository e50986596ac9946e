"""Closed candles over the exchange's WebSocket: feeds, the watermark and the stream service."""
