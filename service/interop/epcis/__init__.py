"""GS1 EPCIS 2.0: documents and events mapped onto the same commands as /v1/events."""
