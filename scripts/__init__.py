"""Command-line entry points: the service, the demo, verification and benchmarks."""
