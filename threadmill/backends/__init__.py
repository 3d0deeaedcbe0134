from threadmill.backends.base import AcknowledgeableTaskBackend

__all__ = ["AcknowledgeableTaskBackend"]
