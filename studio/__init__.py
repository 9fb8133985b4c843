"""The application: session, document model, scheduling, engine thread host, projects, recipes, CLI."""
