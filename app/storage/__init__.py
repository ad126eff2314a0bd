"""Storage: everything that talks to the database, and nothing above it does."""
