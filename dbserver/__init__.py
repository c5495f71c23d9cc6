"""Database Server: the schema and its migrations, registration of
instances, the study lifecycle (stable detection), and the audit log."""
