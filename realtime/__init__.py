"""Realtime: broker, channels, presence, history and the WebSocket protocol."""
