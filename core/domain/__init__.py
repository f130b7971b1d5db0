"""Pure domain types: chat requests and completions, job states. No I/O here."""
