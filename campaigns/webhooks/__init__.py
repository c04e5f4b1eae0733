"""Providers' callbacks: what each reports after a send, turned into delivery events."""
