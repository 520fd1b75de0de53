"""Renderers: analysis results in, text/JSON/pictures out."""
