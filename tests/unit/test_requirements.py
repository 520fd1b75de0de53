"""The one feature table: every command's verdict, backend choice and the
refusals, from facts alone (a Features record, no machine probed)."""
import dataclasses

import pytest

from idlemap import backends
from idlemap.backends import BACKENDS, SYSTEM_BACKENDS, choose, choose_system, options_for, why_not
from idlemap.errors import AccessDenied, FeatureMissing, IdlemapError, UsageError
from idlemap.kernel.features import KMOD_DEVICE, Features
from idlemap.requirements import FEATURES, KMOD, PAGE_IDLE, WAYS, Environment, verdict

BARE = Features(kernel="6.1.0-debian", is_root=True, page_idle=False, page_idle_writable=False, pagemap=True,
                pagemap_frames=True, kpageflags=True, clear_refs=True, soft_dirty=True, damon_sysfs=True,
                damon_vaddr=True, damon_paddr=True, damon_busy=False, thp="madvise", numa_nodes=[0],
                swap_bytes=0, fuse=True)


def feats(**kw):
    return dataclasses.replace(BARE, **{k: v for k, v in kw.items() if hasattr(BARE, k)})


def env(**kw):
    return Environment(feats(**kw), frozenset(kw.get("mods", ())), frozenset(kw.get("progs", ())),
                       kw.get("headers", False), kw.get("refusal", ""))


# -- the table -------------------------------------------------------------------------

def test_every_need_named_in_ways_and_capabilities_exists():
    for ways in WAYS.values():
        for _, needs in ways:
            assert all(n in FEATURES for n in needs)
    for cls in (*BACKENDS.values(), *SYSTEM_BACKENDS.values()):
        assert all(n in FEATURES for n in cls.caps.needs()), cls


def test_the_ways_follow_the_backends_own_requirements():
    """doctor's per-page ways and the backends' Capabilities say the same."""
    assert set(KMOD) == set(BACKENDS["kmod"].caps.needs())
    assert set(PAGE_IDLE) == set(BACKENDS["page_idle"].caps.needs())


def test_every_kernel_feature_row_names_its_option_or_fix():
    for f in FEATURES.values():
        if f.kernel:
            assert f.config or f.hint, f.name


def test_the_module_device_path_is_the_kernel_layers():
    from idlemap.kernel import kmod
    assert KMOD_DEVICE == kmod.DEVICE


# -- verdicts (doctor) --------------------------------------------------------------------

def test_debian_kernel_wss_works_per_mapping_and_says_what_is_better():
    v = verdict("wss", env())
    assert v.works and "clear_refs" in v.how
    assert v.best.startswith("per page") and v.missing == ["no idlemap module"]
    assert "idlemap kmod load" in v.instead


def test_with_the_module_wss_is_per_page_and_flushed():
    v = verdict("wss", env(kmod_loaded=True))
    assert v.works and "kmod" in v.how and not v.missing


@pytest.mark.parametrize("cmd", ["bitmap", "advise", "reclaim", "tier", "top", "exporter", "mount", "hot"])
def test_the_module_makes_every_per_page_command_work(cmd):
    e = env(kmod_loaded=True, swap_bytes=1 << 30, numa_nodes=[0, 1], mods={"pyfuse3", "prometheus_client"})
    v = verdict(cmd, e)
    assert v.works and "kmod" in v.how, v


def test_refusal_names_the_missing_and_what_to_do():
    v = verdict("tier", env())
    assert not v.works
    assert v.missing == ["no idlemap module", "no two NUMA nodes (CONFIG_NUMA)"]
    assert "idlemap kmod load" in v.instead
    # page_idle is the next way: with it, only the nodes are missing.
    assert verdict("tier", env(page_idle=True, numa_nodes=[0, 1])).works


def test_reclaim_without_swap_falls_back_to_deactivating():
    v = verdict("reclaim", env(page_idle=True))
    assert v.works and "--mode cold" in v.how and "no swap (CONFIG_SWAP)" in v.missing
    assert verdict("reclaim", env(page_idle=True, swap_bytes=1 << 30)).how.startswith("page out")


def test_optional_extras_are_needs_too():
    assert not verdict("exporter", env()).works
    assert "idlemap[exporter]" in verdict("exporter", env()).instead
    assert verdict("exporter", env(mods={"prometheus_client"})).works
    assert verdict("report", env(is_root=False, clear_refs=False)).works


def test_kmod_command_needs_a_compiler_headers_and_module_loading():
    assert not verdict("kmod", env(progs={"gcc"})).works
    assert verdict("kmod", env(progs={"gcc"}, headers=True)).works
    v = verdict("kmod", env(progs={"gcc"}, headers=True, refusal="the kernel is locked down"))
    assert not v.works and v.missing == ["no module loading (CONFIG_MODULES)"]


# -- backend choice ------------------------------------------------------------------------

def test_auto_takes_kmod_first_when_the_module_is_loaded():
    c = choose("auto", features=feats(kmod_loaded=True, page_idle=True))
    assert c.cls is BACKENDS["kmod"] and c.auto
    assert "module is loaded" in c.reason


def test_a_module_built_for_another_idlemap_is_passed_over_and_named():
    # A module of interface 2 still loaded after idlemap was upgraded: auto
    # takes page_idle and says why; asking for kmod is one sentence, exit 69;
    # doctor says the module is loaded but not used, and how to fix it.
    from idlemap.commands.doctor import kmod_line
    from idlemap.kernel.kmod_abi import API_VERSION
    f = feats(kmod_loaded=True, kmod_api=API_VERSION - 1, page_idle=True)
    c = choose("auto", features=f)
    assert c.cls is BACKENDS["page_idle"] and "a build for another idlemap" in c.reason
    with pytest.raises(IdlemapError) as e:
        choose("kmod", features=f)
    msg = str(e.value)
    assert e.value.exit_code == 69 and "rebuild and reload" in msg and "idlemap kmod build" in msg and "\n" not in msg
    line = kmod_line(env(kmod_loaded=True, kmod_api=API_VERSION - 1))
    assert line.startswith("idlemap module: loaded, not used") and "idlemap kmod build" in line
    # not root: the version cannot be asked (None), the module is taken as it is
    assert choose("auto", features=feats(kmod_loaded=True, kmod_api=None)).cls is BACKENDS["kmod"]
    assert choose("auto", features=feats(kmod_loaded=True, kmod_api=API_VERSION)).cls is BACKENDS["kmod"]


def test_auto_takes_page_idle_next_and_says_why_not_kmod():
    c = choose("auto", features=feats(page_idle=True))
    assert c.cls is BACKENDS["page_idle"]
    assert c.reason.startswith("page_idle, because kmod: the idlemap kernel module is not loaded")


def test_auto_falls_back_to_clear_refs_naming_each_missing_feature():
    c = choose("auto", features=feats())
    assert c.cls is BACKENDS["clear_refs"]
    assert "kmod: the idlemap kernel module is not loaded" in c.reason
    assert "page_idle: this kernel has no page_idle bitmap (CONFIG_IDLE_PAGE_TRACKING is not set)" in c.reason


def test_auto_never_takes_damon():
    with pytest.raises(Exception) as e:
        choose("auto", features=feats(clear_refs=False))
    assert "no backend can run here" in str(e.value)


def test_a_kvm_guest_keeps_page_idle_and_says_so():
    f = feats(kmod_loaded=True, page_idle=True)
    c = choose("auto", features=f, guest=True)
    assert c.cls is BACKENDS["page_idle"]
    assert "kmod cannot see a KVM guest's accesses" in c.reason


def test_a_kvm_guest_without_page_idle_gets_kmod_with_a_warning():
    c = choose("auto", features=feats(kmod_loaded=True), guest=True)
    assert c.cls is BACKENDS["kmod"] and "though it cannot see a KVM guest's accesses" in c.reason
    # What an action's refusal will name: why page_idle could not run.
    assert "CONFIG_IDLE_PAGE_TRACKING" in c.guest_blind


def test_a_choice_that_sees_guests_or_has_no_guest_is_not_blind():
    assert choose("auto", features=feats(kmod_loaded=True, page_idle=True), guest=True).guest_blind == ""
    assert choose("auto", features=feats(kmod_loaded=True)).guest_blind == ""


def test_per_page_need_skips_clear_refs_and_refuses_in_one_sentence():
    assert choose("auto", need_per_page=True, features=feats(kmod_loaded=True)).cls is BACKENDS["kmod"]
    with pytest.raises(Exception) as e:
        choose("auto", need_per_page=True, features=feats())
    msg = str(e.value)
    assert e.value.exit_code == 69 and "CONFIG_IDLE_PAGE_TRACKING" in msg and "idlemap kmod load" in msg
    assert "\n" not in msg


def test_per_page_need_without_root_is_a_permission_refusal():
    with pytest.raises(AccessDenied) as e:
        choose("auto", need_per_page=True, features=feats(kmod_loaded=True, page_idle=True, is_root=False))
    assert e.value.exit_code == 77 and "needs root" in str(e.value)


def test_explicit_backends_refuse_with_the_tables_sentence_and_exit_code():
    with pytest.raises(FeatureMissing) as e:
        choose("page_idle", features=feats())
    assert "CONFIG_IDLE_PAGE_TRACKING" in str(e.value) and e.value.exit_code == 69
    with pytest.raises(Exception) as e:
        choose("kmod", features=feats())
    assert e.value.exit_code == 69 and "idlemap kmod load" in str(e.value)
    with pytest.raises(AccessDenied):
        choose("kmod", features=feats(kmod_loaded=True, is_root=False))
    with pytest.raises(UsageError, match="no per-page map"):
        choose("clear_refs", need_per_page=True, features=feats())
    with pytest.raises(UsageError, match="unknown backend"):
        choose("nope", features=feats())


def test_why_not_reads_the_table():
    assert why_not("kmod", feats(kmod_loaded=True)) is None
    assert "not loaded" in why_not("kmod", feats())
    assert why_not("page_idle", feats(page_idle=True, pagemap_frames=False)) == \
        "pagemap hides frame numbers here (needs CAP_SYS_ADMIN)"
    assert why_not("clear_refs", feats(clear_refs=False)).endswith("(CONFIG_PROC_PAGE_MONITOR is not set)")


def test_the_system_pass_follows_the_same_choice():
    assert choose_system("auto", feats(kmod_loaded=True, page_idle=True)).cls is SYSTEM_BACKENDS["kmod"]
    assert choose_system("auto", feats(kmod_loaded=True, page_idle=True), guests=True).cls \
        is SYSTEM_BACKENDS["page_idle"]
    assert choose_system("auto", feats()).cls is SYSTEM_BACKENDS["clear_refs"]


def test_options_go_only_where_the_capabilities_take_them():
    kmod_sys, pi_sys = SYSTEM_BACKENDS["kmod"], SYSTEM_BACKENDS["page_idle"]
    assert options_for(pi_sys, {"mark": ("--mark", "range")}) == {"mark": "range"}
    assert options_for(kmod_sys, {"mark": ("--mark", None)}) == {}
    # Options left at their defaults are not passed at all (the scanner's own defaults hold).
    assert options_for(pi_sys, {"mark": ("--mark", None), "tlb_flush": ("--tlb-flush", None),
                                "guests": ("--vms", None)}) == {}
    with pytest.raises(UsageError, match="--mark goes with the page_idle backend, not kmod"):
        options_for(kmod_sys, {"mark": ("--mark", "range")})


def test_no_branch_on_a_backend_name_outside_the_table():
    """The choice reads capabilities: a backend added with a rank and
    requirements is chosen without any code naming it."""
    from idlemap.backends.base import Capabilities

    class Fake(BACKENDS["clear_refs"]):
        name = "fake"
        caps = dataclasses.replace(BACKENDS["clear_refs"].caps, auto_rank=-1, requires=("FUSE",))
    saved = dict(BACKENDS)
    try:
        BACKENDS["fake"] = Fake
        assert choose("auto", features=feats()).cls is Fake
        assert choose("auto", features=feats(fuse=False)).cls is BACKENDS["clear_refs"]
    finally:
        BACKENDS.clear()
        BACKENDS.update(saved)
    assert isinstance(Fake.caps, Capabilities) and backends.BACKENDS == saved
