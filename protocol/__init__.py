"""What the ServerApp and the ClientApp agree on: the layout of their messages (imported by both,
owned by neither)."""
