"""Data: datasets by name (sources), the seeded stratified split (splits), transforms and loaders."""
