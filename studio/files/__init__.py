"""The studio's files: projects and their archive, atomic writes, the recovery journal, ORA, PNG metadata."""
