"""Commands a person runs by hand: benchmarks and (later) smoke tests."""
