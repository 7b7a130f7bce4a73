"""Embedding spaces, nearest-representation search and the HTTP API."""
