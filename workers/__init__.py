"""Dramatiq worker processes: the actors, the per-process composition root, and upkeep threads."""
