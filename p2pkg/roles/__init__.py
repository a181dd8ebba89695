"""The roles that compose the parts: fetch/client, seed, cache, publish, verify, export."""
