"""Placeholder."""
def run() -> None:
    pass
