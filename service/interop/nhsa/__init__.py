"""The national medical-insurance platform's 进销存 interfaces (3501–3508), as institutions'
systems send them (``../shared/nhsa/FIELDS.md``): pure translation of the request envelope
and its rows into ``Incoming`` events, and the pieces of the response envelope."""
