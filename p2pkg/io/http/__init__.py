"""The peer protocol over HTTP/1.1: pure wire helpers, server and client (docs/protocol.md §6)."""
