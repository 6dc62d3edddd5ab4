"""Console widgets: each polls what it shows from its own thread worker."""
