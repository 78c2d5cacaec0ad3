"""The 'Clara' Segment Editor effect (registered by the ClaraAnnotate module at startup)."""
