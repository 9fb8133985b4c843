"""Generation engines: request and event types, the engine protocol, and the engines themselves. No Qt."""
