from importlib.metadata import version

import agents
import collector


def test_package_versions_match_the_distribution() -> None:
    assert collector.__version__ == version("sensor-telemetry")
    assert agents.__version__ == collector.__version__
