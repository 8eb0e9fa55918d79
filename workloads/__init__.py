"""What runs inside the cluster or CodeBuild: the weights import, the smoke test, the GPU reader."""
