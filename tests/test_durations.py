"""tests/durations.py: the seconds conftest orders the work by, read from JUnit XML."""

import json

from tests import durations

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.models.siglip.test_naflex" name="test_a" time="1.5"/>
<testcase classname="tests.models.siglip.test_naflex" name="test_b[2-crash::x]" time="2.25"/>
<testcase classname="integration_tests.test_guides.TestGuide_locca" name="test_runs" time="140.0"/>
<testcase classname="integration_tests.test_guides.TestGuide_lit" name="test_runs" time="30.0">
<skipped message="no"/></testcase>
</testsuite></testsuites>
"""


def test_scope_is_the_module_or_the_class():
    assert durations.scope("tests/test_x.py::test_y[a-b]") == "tests/test_x.py"
    assert durations.scope("tests/test_x.py::TestZ::test_y") == "tests/test_x.py::TestZ"
    assert durations.scope("tests/test_x.py::test_y[a::b]") == "tests/test_x.py"


def test_junit_seconds_add_up_per_scope(tmp_path, monkeypatch):
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    assert durations.scope_seconds(junit) == {
        "tests/models/siglip/test_naflex.py": 3.75,
        "integration_tests/test_guides.py::TestGuide_locca": 140.0,
        "integration_tests/test_guides.py::TestGuide_lit": 30.0,
    }
    monkeypatch.setattr(durations, "PATH", tmp_path / "durations.json")
    assert durations.load("jax") == {}
    durations.main([f"torch={junit}"])
    durations.main([f"jax={junit}"])  # a second backend keeps the first
    recorded = json.loads((tmp_path / "durations.json").read_text())
    assert set(recorded) == {"jax", "torch"}
    assert durations.load("torch")["tests/models/siglip/test_naflex.py"] == 3.8


def test_the_recorded_file_names_every_backend():
    for backend in ("jax", "tensorflow", "torch"):
        assert len(durations.load(backend)) > 100, backend


def test_longest_first_keeps_each_scope_together():
    nodeids = ["a.py::t1", "a.py::t2", "b.py::T::t1", "c.py::t1", "c.py::t2", "c.py::t3", "d.py::t1"]
    recorded = {"a.py": 10.0, "b.py::T": 30.0, "d.py": 1.0}  # median 5 s a test: c.py counts 15 s
    assert durations.longest_first(nodeids, recorded) == [
        "b.py::T::t1", "c.py::t1", "c.py::t2", "c.py::t3", "a.py::t1", "a.py::t2", "d.py::t1"]
    assert durations.longest_first(nodeids, {}) == [  # nothing recorded: most tests first
        "c.py::t1", "c.py::t2", "c.py::t3", "a.py::t1", "a.py::t2", "b.py::T::t1", "d.py::t1"]
