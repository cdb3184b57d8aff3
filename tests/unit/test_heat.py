"""Heat: diskstats parsing (512-byte sectors), loop attribution, sliding window, resets."""

from __future__ import annotations

from pathlib import Path

from scratch_stage.host.heat import (
    SECTOR_BYTES,
    Attach,
    HeatMemory,
    dataset_of_path,
    parse_diskstats,
    read_attach,
    read_loop_backings,
    update_heat,
)

DATA = Path(__file__).resolve().parent.parent / "data"
# tests/data/diskstats-4k-loop.txt: loop0 had a 4096-byte logical sector size and backed an
# 8,392,704-byte squashfs image whose 8 MiB file was read once through the mount.
IMAGE_BYTES = 8_392_704

dataset_of = dataset_of_path("/slow", "/fast")


def test_recorded_4k_loop_counts_512_byte_sectors() -> None:
    sectors = parse_diskstats((DATA / "diskstats-4k-loop.txt").read_text())
    read = sectors["loop0"] * SECTOR_BYTES
    # 512-byte sectors give about one image's worth; the prototype's x4096 gave 8x that.
    assert IMAGE_BYTES <= read <= 2 * IMAGE_BYTES
    assert sectors["loop0"] * 4096 > 8 * IMAGE_BYTES


def test_parse_diskstats_skips_malformed_lines() -> None:
    text = "   7 0 loop0 1 0 42 0 0 0 0 0 0 0 0\ngarbage\n 8 0 vda x y z\n"
    assert parse_diskstats(text) == {"loop0": 42}


def test_dataset_of_path_knows_slow_cached_and_deleted_files() -> None:
    assert dataset_of("/slow/imagenet.v2.sqfs") == "imagenet.v2"
    assert dataset_of("/slow/coco.squashfs") == "coco"
    assert dataset_of("/fast/coco.sqfs (deleted)") == "coco"
    assert dataset_of("/elsewhere/coco.sqfs") is None
    assert dataset_of("/slow/sub/coco.sqfs") is None
    assert dataset_of("/fast/.partial/coco.1.part") is None


def test_read_loop_backings_from_a_fake_sysfs(tmp_path: Path) -> None:
    for loop, backing in {"loop0": "/slow/a.sqfs", "loop3": "/fast/a.sqfs (deleted)"}.items():
        d = tmp_path / "sys/block" / loop / "loop"
        d.mkdir(parents=True)
        (d / "backing_file").write_text(backing + "\n")
    (tmp_path / "sys/block/loop5").mkdir()  # detached: no loop/ directory
    assert read_loop_backings(tmp_path) == {
        "loop0": "/slow/a.sqfs",
        "loop3": "/fast/a.sqfs (deleted)",
    }


def sample(memory: HeatMemory, sectors: dict[str, int], backings: dict[str, str], now: float,
           period: float = 600) -> tuple[HeatMemory, dict[str, float]]:  # fmt: skip
    return update_heat(memory, sectors, backings, dataset_of, now=now, period=period)


def test_first_sample_attributes_nothing_then_rates_sum_both_layers() -> None:
    backings = {"loop0": "/slow/a.sqfs", "loop1": "/fast/a.sqfs"}
    memory, rates = sample(HeatMemory(), {"loop0": 1000, "loop1": 50}, backings, now=0)
    assert rates == {"a": 0.0}
    memory, rates = sample(memory, {"loop0": 1100, "loop1": 150}, backings, now=10)
    assert rates["a"] == 200 * SECTOR_BYTES / 10


def test_window_forgets_old_reads() -> None:
    backings = {"loop0": "/slow/a.sqfs"}
    memory, _ = sample(HeatMemory(), {"loop0": 0}, backings, now=0, period=100)
    memory, rates = sample(memory, {"loop0": 1000}, backings, now=50, period=100)
    assert rates["a"] > 0
    memory, rates = sample(memory, {"loop0": 1000}, backings, now=200, period=100)
    memory, rates = sample(memory, {"loop0": 1000}, backings, now=260, period=100)
    assert rates["a"] == 0


def test_counter_reset_and_loop_reuse_do_not_invent_reads() -> None:
    memory, _ = sample(HeatMemory(), {"loop0": 10_000}, {"loop0": "/slow/a.sqfs"}, now=0)
    # Reboot: the counter restarts from a small number.
    memory, rates = sample(memory, {"loop0": 100}, {"loop0": "/slow/a.sqfs"}, now=10)
    assert rates["a"] == 100 * SECTOR_BYTES / 10
    # loop0 now backs another image: its count so far belongs to nobody.
    memory, rates = sample(memory, {"loop0": 5_000}, {"loop0": "/slow/b.sqfs"}, now=20)
    assert "b" not in rates or rates["b"] == 0


def test_memory_round_trips_through_json() -> None:
    memory, _ = sample(HeatMemory(), {"loop0": 1}, {"loop0": "/slow/a.sqfs"}, now=0)
    memory, _ = sample(memory, {"loop0": 9}, {"loop0": "/slow/a.sqfs"}, now=5)
    assert HeatMemory.from_json(memory.to_json()) == memory
    assert HeatMemory.from_json(None) == HeatMemory()


def test_samples_from_the_future_are_dropped_after_a_clock_step_back() -> None:
    # Observed on main: a backward clock step left "future" samples in the window and
    # made the heat 1e15 B/s. Such samples are dropped; the rate stays what was read.
    backings = {"loop0": "/slow/a.sqfs"}
    memory, _ = sample(HeatMemory(), {"loop0": 0}, backings, now=1_000_000, period=600)
    memory, _ = sample(memory, {"loop0": 2000}, backings, now=1_000_060, period=600)
    memory, rates = sample(memory, {"loop0": 4000}, backings, now=100, period=600)  # stepped
    assert all(t <= 100 for t, _ in memory.samples["a"])
    assert rates["a"] < 1e6


def attached(memory: HeatMemory, loop: str, backing: str, at: float, sectors: int) -> HeatMemory:
    return memory.with_attach(Attach(loop, backing, at, sectors))


def test_first_sample_counts_from_the_attach_record() -> None:
    # loop0's counter was 5000 when scratch-stage attached it at t=100 (loop counters
    # survive a detach); 2000 sectors were read by t=160: heat from the first sample.
    backings = {"loop0": "/slow/a.sqfs", "loop1": "/slow/b.sqfs"}
    memory = attached(HeatMemory(), "loop0", "/slow/a.sqfs", 100, 5000)
    memory = attached(memory, "loop1", "/slow/other.sqfs", 100, 0)  # loop1 reused since
    memory, rates = sample(memory, {"loop0": 7000, "loop1": 900}, backings, now=160)
    assert rates["a"] == 2000 * SECTOR_BYTES / 60
    assert rates["b"] == 0  # its record names another file: nothing attributed
    assert memory.attached == {}  # consumed
    # The next sample goes on from the counters; the window reaches back to the attach.
    memory, rates = sample(memory, {"loop0": 7600, "loop1": 900}, backings, now=220, period=600)
    assert rates["a"] == 2600 * SECTOR_BYTES / 120


def test_attach_record_of_a_long_mounted_device_averages_since_attach() -> None:
    backings = {"loop0": "/slow/a.sqfs"}
    memory = attached(HeatMemory(), "loop0", "/slow/a.sqfs", 0, 0)
    _, rates = sample(memory, {"loop0": 36_000}, backings, now=3600, period=600)
    assert rates["a"] == 10 * SECTOR_BYTES


def test_a_second_layer_attached_later_spreads_over_existing_samples() -> None:
    # a's slow image has been sampled; its cached copy is mounted over at t=50.
    backings = {"loop0": "/slow/a.sqfs"}
    memory, _ = sample(HeatMemory(), {"loop0": 0}, backings, now=0, period=600)
    memory, _ = sample(memory, {"loop0": 100}, backings, now=40, period=600)
    memory = attached(memory, "loop1", "/fast/a.sqfs", 50, 10)
    both = {**backings, "loop1": "/fast/a.sqfs"}
    memory, rates = sample(memory, {"loop0": 100, "loop1": 310}, both, now=100, period=600)
    assert rates["a"] == (100 + 300) * SECTOR_BYTES / 100
    totals = [c for _, c in memory.samples["a"]]
    assert totals == sorted(totals)


def test_attach_records_from_the_future_or_counters_known_are_not_counted_twice() -> None:
    backings = {"loop0": "/slow/a.sqfs"}
    memory, _ = sample(HeatMemory(), {"loop0": 100}, backings, now=0)
    memory = attached(memory, "loop0", "/slow/a.sqfs", 5, 0)  # already counted from 100
    memory, rates = sample(memory, {"loop0": 150}, backings, now=10)
    assert rates["a"] == 50 * SECTOR_BYTES / 10
    memory = attached(HeatMemory(), "loop0", "/slow/a.sqfs", 99, 0)
    _, rates = sample(memory, {"loop0": 150}, backings, now=10)  # clock stepped back
    assert rates == {"a": 0.0}


def test_attach_records_round_trip_and_old_files_read_without_them() -> None:
    memory = attached(HeatMemory(), "loop3", "/fast/a.sqfs", 12.5, 77)
    assert HeatMemory.from_json(memory.to_json()) == memory
    old = {"counters": {"loop0": ["/slow/a.sqfs", 4]}, "samples": {"a": [[1.0, 2]]}}
    assert HeatMemory.from_json(old).attached == {}


def test_read_attach_from_a_fake_sysfs(tmp_path: Path) -> None:
    block = tmp_path / "sys/block/loop7"
    (block / "loop").mkdir(parents=True)
    (block / "loop/backing_file").write_text("/slow/a.sqfs\n")
    (block / "stat").write_text("     25        0     5904        8        0        0        0\n")
    assert read_attach(tmp_path, "/dev/loop7", 3.0) == Attach("loop7", "/slow/a.sqfs", 3.0, 5904)
    assert read_attach(tmp_path, "/dev/loop8", 3.0) is None
