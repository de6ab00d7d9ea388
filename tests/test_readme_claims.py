"""The README's claims section is written from the generated claims table, between its markers."""
import pytest

from experiments.analysis.readme_claims import BEGIN, END, main, replace_block


def test_block_is_replaced_and_the_rest_kept():
    readme = f"# T\nintro\n{BEGIN}\nold table\n{END}\ntail\n"
    out = replace_block(readme, "| a | b |\n")
    assert out == f"# T\nintro\n{BEGIN}\n| a | b |\n{END}\ntail\n"
    assert replace_block(out, "| a | b |") == out  # idempotent


def test_missing_markers_is_an_error():
    with pytest.raises(ValueError, match="README"):
        replace_block("# no markers\n", "| a |")


def test_main_writes_readme_and_stamp(tmp_path):
    readme, claims, done = tmp_path / "README.md", tmp_path / "claims.md", tmp_path / "done"
    readme.write_text(f"x\n{BEGIN}\n{END}\n")
    claims.write_text("| c |\n")
    assert main(["--claims", str(claims), "--readme", str(readme), "--done", str(done)]) == 0
    assert "| c |" in readme.read_text() and done.exists()
    readme.unlink()
    assert main(["--claims", str(claims), "--readme", str(readme), "--done", str(done)]) == 0
    assert not readme.exists()
