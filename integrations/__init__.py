"""Engine-side and agent-framework integrations (installed as kvstore.integrations)."""
