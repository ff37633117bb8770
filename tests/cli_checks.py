"""Shared assertion for CLI tests: a user mistake ends with exit code 2 and a message, no traceback."""


def assert_user_error(result, *fragments):
    """``result`` (click.testing.Result) exited 2 cleanly and its output holds every fragment."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for fragment in fragments:
        assert fragment in result.output, result.output
