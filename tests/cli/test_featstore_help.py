"""Every featstore command's --help runs and names its key options."""
import pytest
from click.testing import CliRunner

from cli.featstore_cli import main


@pytest.mark.parametrize("cmd,expect", [
    ([], ["extract", "info", "verify"]),
    (["extract"], ["--model", "--data", "--layers", "--format", "--overwrite", "--batch-tokens"]),
    (["info"], ["--json"]),
    (["verify"], ["--no-values"]),
])
def test_help(cmd, expect):
    r = CliRunner().invoke(main, cmd + ["--help"])
    assert r.exit_code == 0, r.output
    for e in expect:
        assert e in r.output
