"""How each model type is started, probed for readiness and stopped."""
