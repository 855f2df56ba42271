"""External systems: source configuration, the HTTP client, and the sample server."""
