"""Providers: INF ProviderName/ProviderType -> module, token and profile; policy -> KeyPlan;
capacity checks. Pure planning: nothing here opens a session."""
