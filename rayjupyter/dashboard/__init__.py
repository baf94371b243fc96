"""The head's web dashboard and its JSON API, started on demand."""
