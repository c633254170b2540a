"""sip-to-ai: carries phone-call audio (RTP, G.711) to realtime voice AI and back."""

__version__ = "0.1.0"
