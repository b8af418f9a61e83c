"""YAML-defined tools, resources and prompts: loaded and validated once, at start-up."""
