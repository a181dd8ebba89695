"""The I/O shells: the store on disk, HTTP, LAN discovery, the DHT (docs/architecture.md)."""
