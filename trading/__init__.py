"""Order intents, sizing, risk limits, paper and live brokers. May import core and data."""
