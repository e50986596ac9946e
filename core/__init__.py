"""Cross-cutting foundations: typed settings, error hierarchy, UTC minute grid, logging.

Imports nothing from the other project packages; every other package may import it.
"""
