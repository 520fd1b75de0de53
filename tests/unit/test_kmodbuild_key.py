"""The module cache key: release, sources and the kernel's configuration.

A kernel rebuilt with another configuration keeps its release (6.1.192 for
both the test kernel with and without KVM) but may move structure fields, so
a module cached for one configuration must never be found for the other."""
import pytest

from idlemap import kmodbuild
from idlemap.errors import UsageError
from idlemap.kernel.kmod import MODULE

PLAIN = "# Automatically generated file\nCONFIG_64BIT=y\nCONFIG_MODULES=y\n# CONFIG_KVM is not set\n"
WITH_KVM = PLAIN + "CONFIG_KVM=y\nCONFIG_MMU_NOTIFIER=y\n"
REL = "9.9.9-test"           # never the running kernel's release


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IDLEMAP_CACHE", str(tmp_path))
    monkeypatch.setattr(kmodbuild.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    return tmp_path


def _fake_build(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_digest_ignores_comments_and_order():
    reordered = "CONFIG_MODULES=y\n# a comment\nCONFIG_64BIT=y\n"
    assert kmodbuild.config_digest(PLAIN) == kmodbuild.config_digest(reordered)
    assert kmodbuild.config_digest(PLAIN) != kmodbuild.config_digest(WITH_KVM)


def test_another_configuration_of_the_same_release_is_another_entry(cache):
    plain = kmodbuild.built_path(REL, config=PLAIN)
    kvm = kmodbuild.built_path(REL, config=WITH_KVM)
    assert plain != kvm and plain.name == kvm.name == f"{MODULE}.ko"
    _fake_build(plain)
    assert kmodbuild.built_path(REL, config=PLAIN) == plain
    assert not kmodbuild.built_path(REL, config=WITH_KVM).exists()


def test_unknown_configuration_takes_the_only_build(cache):
    assert not kmodbuild.built_path(REL).exists()
    only = _fake_build(kmodbuild.built_path(REL, config=PLAIN))
    assert kmodbuild.built_path(REL) == only


def test_unknown_configuration_with_two_builds_is_one_sentence(cache):
    _fake_build(kmodbuild.built_path(REL, config=PLAIN))
    _fake_build(kmodbuild.built_path(REL, config=WITH_KVM))
    with pytest.raises(UsageError, match=r"several builds .* pass the one to load with --ko"):
        kmodbuild.built_path(REL)


def test_tree_without_config_is_one_sentence(tmp_path):
    with pytest.raises(UsageError, match="no .config"):
        kmodbuild.tree_config(str(tmp_path))
