"""panseg export package."""
