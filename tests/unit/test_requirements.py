"""requirements.verdict: every command's verdict from facts alone."""
import dataclasses

from idlemap.kernel.features import Features
from idlemap.requirements import NEEDS, WAYS, Environment, verdict

BARE = Features(kernel="6.1.0-debian", is_root=True, page_idle=False, page_idle_writable=False, pagemap=True,
                pagemap_frames=True, kpageflags=True, clear_refs=True, soft_dirty=True, damon_sysfs=True,
                damon_vaddr=True, damon_paddr=True, damon_busy=False, thp="madvise", numa_nodes=[0],
                swap_bytes=0, fuse=True)


def env(**kw):
    f = dataclasses.replace(BARE, **{k: v for k, v in kw.items() if hasattr(BARE, k)})
    return Environment(f, frozenset(kw.get("mods", ())), frozenset(kw.get("progs", ())),
                       kw.get("kmod", False))


def test_every_need_named_in_ways_exists():
    for ways in WAYS.values():
        for _, needs in ways:
            assert all(n in NEEDS for n in needs)


def test_debian_kernel_wss_works_per_mapping_and_says_what_is_better():
    v = verdict("wss", env())
    assert v.works and "clear_refs" in v.how
    assert v.best.startswith("per page") and v.missing == ["no idlemap module"]
    assert "idlemap kmod load" in v.instead


def test_with_the_module_wss_is_per_page_and_flushed():
    v = verdict("wss", env(kmod=True))
    assert v.works and "kmod" in v.how and not v.missing


def test_refusal_names_the_config_and_what_to_do():
    v = verdict("tier", env())
    assert not v.works
    assert v.missing == ["no page_idle bitmap (CONFIG_IDLE_PAGE_TRACKING)", "no two NUMA nodes (CONFIG_NUMA)"]
    assert "idlemap demo" in v.instead


def test_reclaim_without_swap_falls_back_to_deactivating():
    v = verdict("reclaim", env(page_idle=True))
    assert v.works and "--mode cold" in v.how and v.missing == ["no swap (CONFIG_SWAP)"]
    assert verdict("reclaim", env(page_idle=True, swap_bytes=1 << 30)).how.startswith("page out")


def test_optional_extras_are_needs_too():
    assert not verdict("exporter", env()).works
    assert "idlemap[exporter]" in verdict("exporter", env()).instead
    assert verdict("exporter", env(mods={"prometheus_client"})).works
    assert verdict("report", env(is_root=False, clear_refs=False)).works
