"""The soak section of BENCHMARKS.md survives `evol bench` rewriting the file (benchmarks/soak.py)."""

from benchmarks.soak import BEGIN, END, keep_soak_section


def test_bench_rewrite_keeps_the_soak_section_and_a_new_section_replaces_it(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\nold numbers\n\n{BEGIN}\n## Soak\n12 kills\n{END}\n")
    rewritten = keep_soak_section(path, "# Benchmarks\n\nnew numbers\n")
    assert "new numbers" in rewritten and "12 kills" in rewritten and "old numbers" not in rewritten
    path.write_text(rewritten)
    replaced = keep_soak_section(path, rewritten, f"{BEGIN}\n## Soak\n14 kills\n{END}\n")
    assert "14 kills" in replaced and "12 kills" not in replaced and replaced.count(BEGIN) == 1


def test_no_soak_section_yet_leaves_the_text_alone(tmp_path):
    assert keep_soak_section(tmp_path / "none.md", "# Benchmarks\n") == "# Benchmarks\n"
