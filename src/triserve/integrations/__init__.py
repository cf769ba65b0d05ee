"""triserve on engines that run it past one machine (Ray Serve: integrations.ray)."""
