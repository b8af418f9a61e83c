"""Configuration: project file (sqlgate.yml), user config (profiles), env overrides."""
