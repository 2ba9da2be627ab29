"""The one error type users see: a one-line message that names the field or file at fault."""


class GanscaleError(Exception):
    """A problem with the user's input (study, weights, data). Printed as one line, exit code 2."""
