"""Typed contracts shared by every component: the resource spec and the KV block hash."""
