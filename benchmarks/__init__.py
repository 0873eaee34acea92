"""panseg benchmarks package."""
