"""`helm upgrade --reuse-values` from a release of an earlier chart version.

Helm then renders this chart's templates with the values the release was built with, *the old chart's defaults
included* (not this chart's values.yaml), with the -f / --set layers over them. A key the old values.yaml
lacked is simply absent. tests/deployment/older_values/ holds this chart's own values.yaml as published in
0.1.0, 0.2.0 (unchanged in the first 0.3.0) and 0.3.0. Each is rendered here as Helm would: the chart with that
values.yaml in place of its own. 0.2 and 0.3 releases must render exactly what a fresh install of this chart
renders with the same layers (a key they lack reads as its default, never as "<nil>" in a container's
environment, which the facade would refuse at start, leaving the new pod crash-looping). 0.1 values lack keys
every template reads: the render is refused, naming them and the way out."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import helm_python
import pytest

from tests.deployment.test_helm import CHART_DIR, PRESETS_DIR, merged, preset, render_raw

OLDER = Path(__file__).parent / "older_values"
LAYERS = ["", *sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))]  # "": no -f layer


def chart_with_values(version: str, root: Path) -> helm_python.Chart:
    folder = root / f"chart-{version}"
    shutil.copytree(CHART_DIR, folder)
    shutil.copyfile(OLDER / f"{version}.yaml", folder / "values.yaml")
    return helm_python.Chart.load(folder)


def render_upgrade(chart: helm_python.Chart, values: dict[str, Any]) -> dict[str, str]:
    return render_raw(values, chart=chart, is_upgrade=True, is_install=False, revision=2)


@pytest.fixture(scope="module")
def charts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, helm_python.Chart]:
    root = tmp_path_factory.mktemp("charts")
    return {
        "current": helm_python.Chart.load(CHART_DIR),
        **{v: chart_with_values(v, root) for v in ("0.1.0", "0.2.0", "0.3.0")},
    }


def layers(name: str) -> dict[str, Any]:
    return merged(preset(name)) if name else {}


@pytest.mark.parametrize("version", ["0.2.0", "0.3.0"])
@pytest.mark.parametrize("layer", LAYERS)
def test_a_02_or_03_release_upgrades_with_reuse_values_to_what_a_fresh_install_renders(
    charts: dict[str, helm_python.Chart], version: str, layer: str
) -> None:
    values = layers(layer)
    got = render_upgrade(charts[version], values)
    want = render_upgrade(charts["current"], values)
    text = "\n".join(got.values())
    assert "<nil>" not in text and "%!" not in text  # a missing key never reaches a manifest as Go's nil
    assert got == want


def test_the_02_values_lack_keys_the_chart_reads_so_the_test_above_means_something() -> None:
    import yaml

    old = yaml.safe_load((OLDER / "0.2.0.yaml").read_text())
    new = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert "priority" not in old["facade"] and "tracing" not in old["facade"]
    assert new["facade"]["priority"] and new["facade"]["tracing"]


@pytest.mark.parametrize("layer", LAYERS)
def test_a_01_release_upgrading_with_reuse_values_is_refused_with_the_way_out(
    charts: dict[str, helm_python.Chart], layer: str
) -> None:
    with pytest.raises(Exception) as err:
        render_upgrade(charts["0.1.0"], layers(layer))
    message = str(err.value)
    assert "the values lack" in message and "facade.tls" in message
    assert "--reset-then-reuse-values" in message
    assert "nil pointer" not in message  # refused by the chart's own check, before any template stumbles
