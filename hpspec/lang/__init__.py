"""The language: grammar loading, the syntax tree, parse and fmt. Imports `core` only."""
