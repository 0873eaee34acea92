"""panseg train package."""
