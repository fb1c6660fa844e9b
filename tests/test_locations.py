"""stitchlib.locations: where the store, figures, data and weights live, and when the package runs
from a source checkout. The installed (non-checkout) case end to end: tests/test_install.py."""
from pathlib import Path

import pytest

import stitchlib
from stitchlib import data, locations, pretrained, store

CHECKOUT = Path(stitchlib.__file__).resolve().parent.parent
ENV = {"STITCHLIB_STORE": locations.store_dir, "STITCHLIB_FIGURES": locations.figures_dir,
       "STITCHLIB_DATA": locations.data_dir, "STITCHLIB_WEIGHTS": locations.weights_dir}


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_this_test_runs_from_a_checkout():
    assert locations.checkout_root() == CHECKOUT
    assert locations.in_checkout()


def test_checkout_defaults_are_the_folders_of_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # none depends on the cwd
    assert locations.store_dir() == CHECKOUT / "runs" / "store"
    assert locations.figures_dir() == CHECKOUT / "figures"
    assert locations.data_dir() == CHECKOUT / "data"
    assert locations.weights_dir() == CHECKOUT / "data" / "weights"
    assert locations.notebooks_dir() == CHECKOUT / "notebooks"
    assert locations.shared_data_dir() == CHECKOUT.parent / "shared" / "data"
    # The old names are the same functions.
    assert store.default_store_root() == locations.store_dir()
    assert data.data_dir() == locations.data_dir()
    assert pretrained.weights_dir() == locations.weights_dir()


@pytest.mark.parametrize("name", sorted(ENV))
def test_the_environment_variable_wins_and_is_made_absolute(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, "relative/place")
    assert ENV[name]() == tmp_path / "relative" / "place"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(name, "~/x")
    assert ENV[name]() == tmp_path / "home" / "x"
    monkeypatch.setenv(name, "")  # empty: as if unset
    assert ENV[name]() == locations.checkout_root() / {"STITCHLIB_STORE": "runs/store", "STITCHLIB_FIGURES": "figures",
                                                       "STITCHLIB_DATA": "data",
                                                       "STITCHLIB_WEIGHTS": "data/weights"}[name]


def test_outside_a_checkout_everything_goes_to_the_per_user_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(locations, "checkout_root", lambda: None)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    user = tmp_path / "xdg-data" / "stitchlib"
    assert locations.user_dir() == user
    assert locations.store_dir() == user / "store"
    assert locations.figures_dir() == user / "figures"
    assert locations.data_dir() == user / "data"
    assert locations.weights_dir() == user / "data" / "weights"
    assert locations.shared_data_dir() is None
    assert locations.notebooks_dir() == Path(locations.__file__).resolve().parent / "_notebooks"
    # The environment still wins.
    monkeypatch.setenv("STITCHLIB_STORE", str(tmp_path / "mine"))
    assert locations.store_dir() == tmp_path / "mine"
    assert store.Store().root == tmp_path / "mine"


def test_checkout_detection(tmp_path):
    assert not locations._is_checkout(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "stitchlib"\n')
    assert not locations._is_checkout(tmp_path)  # no notebooks/: site-packages holding a stray pyproject.toml
    other = tmp_path / "other"
    (other / "notebooks").mkdir(parents=True)
    (other / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    assert not locations._is_checkout(other)
    broken = tmp_path / "broken"
    (broken / "notebooks").mkdir(parents=True)
    (broken / "pyproject.toml").write_text("not toml [")
    assert not locations._is_checkout(broken)
    (tmp_path / "notebooks").mkdir()
    assert locations._is_checkout(tmp_path)


def test_data_looks_beside_the_checkout_only_in_a_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ARCHIVE_ENV, raising=False)
    names = [where for where, _ in data._archive_candidates(tmp_path)]
    assert names == ["root", "shared"]
    monkeypatch.setattr(data, "REPO_ROOT", None)  # an installed copy: stitchlib.locations.checkout_root() is None
    assert data._archive_candidates(tmp_path) == [("root", tmp_path / data.ARCHIVE_NAME)]


def test_readme_and_collect_refuse_to_write_outside_a_checkout(tmp_path, monkeypatch, capsys):
    from stitchlib.__main__ import main

    monkeypatch.setattr(locations, "checkout_root", lambda: None)
    for argv in (["readme"], ["readme", "--check"], ["collect"]):
        assert main(argv) == 2
        assert "source checkout" in capsys.readouterr().err
    # Given explicit paths, collect works anywhere.
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "01_connectivity_claims.csv").write_text("claim\n")
    assert main(["collect", "--figures", str(figures), "--results", str(tmp_path / "results")]) == 0
    assert (tmp_path / "results" / "01_connectivity_claims.csv").is_file()


def test_notebooks_command(tmp_path, capsys):
    from stitchlib.__main__ import main

    target = tmp_path / "nb"
    assert main(["notebooks", str(target)]) == 0
    source = locations.notebooks_dir()
    expected = sorted(p.relative_to(source) for p in [*source.glob("[0-9]*.ipynb"), *source.glob("params/*.yaml"),
                                                      source / "sanitize.cfg"])
    assert sorted(p.relative_to(target) for p in target.rglob("*") if p.is_file()) == expected
    assert len([p for p in expected if p.suffix == ".ipynb"]) == 5
    assert "wrote" in capsys.readouterr().out
    # Again: nothing to do. A changed file is kept unless --force.
    assert main(["notebooks", str(target)]) == 0
    assert "0 files written" in capsys.readouterr().out
    edited = target / "params" / "01_connectivity.smoke.yaml"
    edited.write_text("mine\n")
    (target / "01_connectivity.ipynb").unlink()
    assert main(["notebooks", str(target)]) == 2
    err = capsys.readouterr().err
    assert "params/01_connectivity.smoke.yaml" in err and "--force" in err
    assert edited.read_text() == "mine\n" and not (target / "01_connectivity.ipynb").exists()  # nothing written
    assert main(["notebooks", str(target), "--force"]) == 0
    assert edited.read_bytes() == (source / "params" / "01_connectivity.smoke.yaml").read_bytes()
    assert (target / "01_connectivity.ipynb").is_file()
