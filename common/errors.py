"""The small error hierarchy. The CLI turns any of these into one line and exit code 2."""


class ActstreamError(Exception):
    """Base of every error a user can cause and fix."""


class ConfigError(ActstreamError):
    """A config file or command-line value is invalid."""


class SourceError(ActstreamError):
    """A media file or capture device cannot be read."""


class EngineError(ActstreamError):
    """A model or inference engine cannot be loaded or run."""


class PublishError(ActstreamError):
    """The label stream cannot be published or written."""


class OutputError(ActstreamError):
    """A written file (a recording, an annotated video) does not hold what went into it."""
