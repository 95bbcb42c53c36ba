"""The seed's Celery design as a baseline for the dispatch and IO-bound scenarios."""
