"""`rscf models build-defaults` trains a missing shapes model itself; the catalog only says how."""

from __future__ import annotations

import pytest

from cli.commands import models as models_cli
from inference_workers.models import catalog
from inference_workers.models.registry import RegistryError


class _Registry:
    def __init__(self, versions: dict[str, list[str]]):
        self._versions = versions

    def versions(self, name: str) -> list[str]:
        return self._versions.get(name, [])


@pytest.fixture()
def no_trained_shapes(monkeypatch, tmp_path):
    monkeypatch.setattr(catalog, "trained_shapes", lambda: None)
    monkeypatch.setattr(catalog, "build_dir", lambda name: tmp_path / name)
    trained = []
    monkeypatch.setattr("tools.train_image.train", lambda out, minutes: trained.append((out, minutes)))
    return tmp_path, trained


def test_catalog_names_the_training_command_instead_of_training(no_trained_shapes):
    with pytest.raises(RegistryError, match="rscf models train-image --minutes 3"):
        catalog.build_shapes(3.0)


def test_build_defaults_trains_a_missing_shapes_model(no_trained_shapes):
    tmp_path, trained = no_trained_shapes
    models_cli._train_missing_shapes(_Registry({}), 2.0, None, lambda m: None)
    assert trained == [(tmp_path / "shapes-ddpm", 2.0)]


@pytest.mark.parametrize("registry, only", [
    (_Registry({"shapes-ddpm": ["1"]}), None),  # already published
    (_Registry({}), {"smollm2-135m"}),  # not asked for
])
def test_build_defaults_does_not_train_what_it_will_not_publish(no_trained_shapes, registry, only):
    _, trained = no_trained_shapes
    models_cli._train_missing_shapes(registry, 2.0, only, lambda m: None)
    assert trained == []
