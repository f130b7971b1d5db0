"""The SQL store: engines and sessions, the table models, and the statements over them."""
