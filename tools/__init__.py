"""The project's own development tools: the benchmark, the Karpenter schema check."""
