"""How long each unit of work took in a CI run, so the next runs start the longest first.

pytest-xdist (`--dist loadscope`) hands each worker one module, or one test class,
at a time; conftest orders them by the seconds recorded here for the pass's
backend, longest first, so that no worker is still busy with a long module after
the other has run out of work. A module missing from the file is estimated from
its number of tests. Refresh after a CI run whose tests wrote JUnit XML
(`pytest --junitxml=junit-jax.xml` and so on):

    python -m tests.durations jax=junit-jax.xml tensorflow=junit-tensorflow.xml torch=junit-torch.xml
"""

import json
import pathlib
import sys
import xml.etree.ElementTree as ET

PATH = pathlib.Path(__file__).with_name("durations.json")


def scope(nodeid):
    """The unit pytest-xdist's loadscope schedules: a test's module, or its class."""
    return nodeid.split("[", 1)[0].rsplit("::", 1)[0]


def junit_nodeid(testcase):
    """`tests.models.test_x.TestY` + `test_z[a]` -> `tests/models/test_x.py::TestY::test_z[a]`."""
    parts = testcase.get("classname").split(".")
    module = next(i for i, part in enumerate(parts) if part.startswith("test_"))
    return "::".join(["/".join(parts[:module + 1]) + ".py", *parts[module + 1:], testcase.get("name")])


def scope_seconds(junit_path):
    """{scope: seconds} from a JUnit XML file (setup, call and teardown of each test)."""
    seconds = {}
    for testcase in ET.parse(junit_path).getroot().iter("testcase"):
        key = scope(junit_nodeid(testcase))
        seconds[key] = seconds.get(key, 0.0) + float(testcase.get("time", 0))
    return seconds


def load(backend):
    """{scope: seconds} recorded for `backend`; empty when nothing was recorded."""
    if not PATH.exists():
        return {}
    return json.loads(PATH.read_text()).get(backend, {})


def longest_first(nodeids, recorded):
    """`nodeids` regrouped by scope, the scopes ordered by `recorded` seconds, longest
    first; a scope not recorded counts its tests at the median recorded seconds per test.
    Within a scope the tests keep their order."""
    tests = {}
    for nodeid in nodeids:
        tests.setdefault(scope(nodeid), []).append(nodeid)
    known = sorted(recorded[key] / len(group) for key, group in tests.items() if key in recorded)
    per_test = known[len(known) // 2] if known else 1.0

    def seconds(key):
        return recorded.get(key, per_test * len(tests[key]))

    return [nodeid for key in sorted(tests, key=seconds, reverse=True) for nodeid in tests[key]]


def main(arguments):
    if not arguments or any("=" not in argument for argument in arguments):
        raise SystemExit(__doc__)
    recorded = json.loads(PATH.read_text()) if PATH.exists() else {}
    for argument in arguments:
        backend, junit_path = argument.split("=", 1)
        recorded[backend] = {key: round(value, 1) for key, value in sorted(scope_seconds(junit_path).items())}
        print(f"{backend}: {len(recorded[backend])} units, {sum(recorded[backend].values()):.0f} s of tests")
    PATH.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
