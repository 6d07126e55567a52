"""What serves the model: TorchServe, Ray Serve, the load generator and the deployment files."""
