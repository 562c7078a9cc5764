"""User-facing errors: each carries one line that says what is wrong and how to fix it."""


class LFByteError(Exception):
    """Base class; entry points print ``error: <message>`` and exit 2 instead of a traceback."""


class ConfigError(LFByteError):
    pass


class DataError(LFByteError):
    pass


class CheckpointError(LFByteError):
    pass
