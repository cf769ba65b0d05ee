"""Errors shared by every layer; each protocol adapter maps `code` to its own status."""

from __future__ import annotations

from enum import Enum


class Code(Enum):
    INVALID_ARG = "INVALID_ARG"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"
    UNSUPPORTED = "UNSUPPORTED"
    ALREADY_EXISTS = "ALREADY_EXISTS"


class ServerError(Exception):
    """An error with a Triton-style code and a message meant for the client."""

    def __init__(self, message: str, code: Code = Code.INVALID_ARG) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def invalid(message: str) -> ServerError:
    return ServerError(message, Code.INVALID_ARG)


def not_found(message: str) -> ServerError:
    return ServerError(message, Code.NOT_FOUND)


def unavailable(message: str) -> ServerError:
    return ServerError(message, Code.UNAVAILABLE)


def internal(message: str) -> ServerError:
    return ServerError(message, Code.INTERNAL)


class QueueFull(ServerError):
    """A model's queue is full: UNAVAILABLE (Triton and TorchServe answer 503); TF Serving's
    adapter answers RESOURCE_EXHAUSTED (429), as TF Serving does."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Code.UNAVAILABLE)


class StatusError(ServerError):
    """An error with an explicit HTTP status (TorchServe's PredictionException and friends)."""

    def __init__(self, message: str, status: int, kind: str = "InternalServerException") -> None:
        codes = {404: Code.NOT_FOUND, 409: Code.ALREADY_EXISTS, 503: Code.UNAVAILABLE}
        super().__init__(message, codes.get(status, Code.INVALID_ARG if 400 <= status < 500 else Code.INTERNAL))
        self.status = status
        self.kind = kind
