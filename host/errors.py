"""The one exception type a user can cause; the CLI turns it into a one-line error."""


class TinyFleetError(Exception):
    """A problem the user can fix (bad option, missing port, corrupt file, ...).

    The CLI prints ``tinyfleet: error: <message>`` on stderr and exits with code 1.
    """
