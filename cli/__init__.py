"""The ``mlsignals`` command line (typer). May import every other package."""
