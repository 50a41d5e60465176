"""Edges that speak other formats: each translates into the service's own commands
(``service.core.events.Incoming`` and the rest) and nowhere else does any translating."""
