import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import datagen  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _private_cache_home(tmp_path_factory):
    """Keep shardkit's default cache (webdataset sample counts) out of the real home directory."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    yield
    mp.undo()


@pytest.fixture
def image_tree(tmp_path):
    """An ImageFolder tree with one image of every format and mode (see datagen.IMAGE_CASES)."""
    return datagen.make_image_tree(tmp_path / "images")


@pytest.fixture
def jpeg_tree(tmp_path):
    """3 classes × 10 JPEGs."""
    return datagen.make_jpeg_tree(tmp_path / "jpegs")


@pytest.fixture
def sequences():
    return datagen.random_sequences(500, seed=1)


@pytest.fixture
def jsonl_file(tmp_path, sequences):
    return datagen.write_jsonl(tmp_path / "seq" / "train.jsonl", sequences)


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true", default=False,
                     help="run the hypothesis fuzz tests with many more examples")


@pytest.fixture
def fuzz_examples(request):
    """How many examples a fuzz property runs: short by default, long with --fuzz-long."""
    return 2000 if request.config.getoption("--fuzz-long") else 60
