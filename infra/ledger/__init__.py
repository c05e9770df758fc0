"""The spend ledger's store (SQLite or PostgreSQL) and its schema migrations."""
