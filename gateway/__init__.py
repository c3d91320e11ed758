"""GraphQL persistence gateway for conversational AI apps."""

__version__ = "0.1.0"
