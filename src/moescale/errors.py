"""Errors meant for users: the CLI prints their message and exits 2, without a stack trace."""


class UserError(Exception):
    """Bad input (config, data, table) that the user can fix; the message says how."""


class ConfigError(UserError):
    """A config key is unknown, missing or has a bad value; the message names the key."""
