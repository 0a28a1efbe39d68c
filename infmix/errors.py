"""Expected failures: the CLI prints their message in one line and exits 1."""


class InfmixError(Exception):
    """A failure the user can fix (bad config, bad output folder), as opposed to a bug."""


class ConfigError(InfmixError):
    """The config is invalid; the message names the key."""
