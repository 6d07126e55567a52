"""Ray Serve, the maintained server: `server` starts a local Ray and deploys, `deployment` is what Ray runs."""
