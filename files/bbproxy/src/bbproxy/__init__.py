"""bbproxy: keep legacy (TLS 1.0) XMPP clients working in front of a modern Prosody."""

__version__ = "0.3.0"
