"""Bundled build configs, installed as package data: ``broden1.yaml`` rebuilds Broden from its
five public sources under ``$BRODEN_DATA`` (``broden build broden1``)."""
