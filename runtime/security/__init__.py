"""Client-side security: CURVE key files and the keys a client connects with."""
