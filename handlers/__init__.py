"""HTTP and WebSocket handlers: thin adapters over models/ and realtime/."""
