"""Python client library for the ipamd gRPC API."""
