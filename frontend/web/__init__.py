"""The `greenroom web` dashboard (Flask + Jinja templates, no JavaScript build step)."""
