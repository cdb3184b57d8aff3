"""Cooperative staging vs independent staging, and two peer-transfer engines, on one machine.

    .venv/bin/python bench/coop_staging.py [--nodes 4 8] [--size-mib 1024] [--engines]
        [--shared-rate 100MB/s 300MB/s] [--prepared]

For each node count N, in one run and on the same image (random data, squashfs without
compression, SIZE MiB):
- `single`: one node stages it alone (coop off): the baseline copy time T1;
- `independent`: all N stage it at once, each from datadir (coop off);
- `cooperative`: all N at once with coop on (readers: 1, libtorrent);
- `prepared` (with `--prepared`): the same, after `coop prepare` published the digest
  (its read, off the staging path, is reported apart): the lease holder passes each piece
  on while it reads (pipelined).
Each node is the harness of tests/privileged/coopnodes.py (its own mount namespace, node
tree and 127.0.0.x address); its cachedir is a tmpfs of its own, as a node's local SSD is
its own disk (on one machine, N copies onto one disk would measure that disk). Shared
storage is an ext4 filesystem on its own loop device; its bytes read are the device's
sectors read. All nodes share one page cache, so N nodes reading one file at once would be
served partly from pages another just read (a real parallel filesystem's clients each read
the whole file); in `independent` mode each node therefore reads a copy of its own (same
bytes, its own datadir `data<i>`), as N clients would each fetch the file.
Time to all cached is from the start to the last node's `mount` event.

`--shared-rate RATE...` gives shared storage a realistic speed: the kernel's block
throttling caps reads of its loop device at RATE bytes/s (`100MB/s` = 10^8, `100MiB/s` =
100 x 2^20) for all node processes together, as a parallel filesystem's bandwidth is shared
by every client (cgroup v1 `blkio.throttle.read_bps_device`, or v2 `io.max rbps=`, in a
cgroup made for the run and removed after it). The bench puts itself in that cgroup while
the nodes stage, so every node process starts inside it (no race with a first read); pages
are dropped before each mode, so every read reaches the device and is throttled. Before the
modes, a throttle check reads the image alone in the cgroup: it must take size/RATE +- 10 %.
All modes run at each rate, and the ratios are to the single node's copy at that rate.

`--engines` distributes the same torrent from one seed to N-1 peers with libtorrent
(peers given directly, as scratch-stage does) and with aria2c (BitTorrent; aria2 takes peers
only from a tracker, so a local opentracker runs for it), timing until every peer is done.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "privileged"))

from coopnodes import CLI, Cluster, CoopNode, drop_pages  # noqa: E402

from scratch_stage.host import torrent  # noqa: E402

MIB = 1 << 20
CGROUP = Path("/sys/fs/cgroup")


def parse_rate(text: str) -> int:
    """'100MB/s' -> 10**8 bytes/s, '100MiB/s' -> 100 * 2**20 (also K/G, KiB/GiB, plain B)."""
    units = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 1 << 10, "MIB": MIB,
             "GIB": 1 << 30}  # fmt: skip
    body = text.strip().upper().removesuffix("/S")
    number = body.rstrip("KMGIB")
    unit = body[len(number) :] or "B"
    try:
        value = float(number) * units[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (e.g. 100MB/s)") from None
    if value < 1 * MIB:
        raise argparse.ArgumentTypeError(f"rate too low: {text!r} (at least 1MiB/s)")
    return int(value)


class Throttle:
    """A cgroup that caps reads of DEVICE at RATE bytes/s for all its processes together.

    cgroup v1: a child of the `blkio` hierarchy with `blkio.throttle.read_bps_device`;
    v2: a child of the root with the `io` controller and `io.max` "MAJ:MIN rbps=RATE".
    `enter` moves the calling process in (its children are born inside), `leave` moves it
    back to where it was; `close` removes the cgroup (once its processes are gone).
    """

    def __init__(self, device: str, rate: int) -> None:
        rdev = os.stat(device).st_rdev
        self.key = f"{os.major(rdev)}:{os.minor(rdev)}"
        self.rate = rate
        name = f"scratch-stage-coopbench-{os.getpid()}"
        if (CGROUP / "blkio" / "blkio.throttle.read_bps_device").exists():
            self.hierarchy = CGROUP / "blkio"
            self.path = self.hierarchy / name
            self.path.mkdir()
            (self.path / "blkio.throttle.read_bps_device").write_text(f"{self.key} {rate}\n")
            field = "blkio"
        elif (CGROUP / "cgroup.controllers").exists():
            if "io" not in (CGROUP / "cgroup.controllers").read_text().split():
                raise SystemExit("coop_staging.py: cgroup v2 without the io controller")
            (CGROUP / "cgroup.subtree_control").write_text("+io\n")
            self.hierarchy = CGROUP
            self.path = CGROUP / name
            self.path.mkdir()
            (self.path / "io.max").write_text(f"{self.key} rbps={rate}\n")
            field = ""
        else:
            raise SystemExit("coop_staging.py: no cgroup blkio (v1) or io (v2) controller")
        self.home = self.hierarchy
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, where = line.split(":", 2)
            if controllers.split(",") == [field] or (not field and controllers == ""):
                self.home = self.hierarchy / where.lstrip("/")

    def enter(self) -> None:
        (self.path / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def leave(self) -> None:
        (self.home / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def close(self) -> str | None:
        """Remove the cgroup; a description of what is left, if it could not."""
        self.leave()
        for _ in range(100):
            try:
                self.path.rmdir()
                return None
            except FileNotFoundError:
                return None
            except OSError:
                time.sleep(0.1)  # its last processes are still exiting
        procs = (self.path / "cgroup.procs").read_text().split()
        return f"cgroup {self.path} (processes {' '.join(procs) or 'none'})"


def check_throttle(throttle: Throttle, image: Path) -> tuple[float, float]:
    """Read IMAGE alone inside the throttle, pages dropped: (seconds, size/rate seconds)."""
    drop_pages(image)
    throttle.enter()
    try:
        started = time.monotonic()
        with open(image, "rb", buffering=0) as f:
            while f.read(4 * MIB):
                pass
        seconds = time.monotonic() - started
    finally:
        throttle.leave()
    drop_pages(image)
    return seconds, image.stat().st_size / throttle.rate


def build_image(datadir: Path, mib: int, work: Path) -> Path:
    src = work / "src"
    src.mkdir()
    with open(src / "random.bin", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))
    image = datadir / "img.sqfs"
    subprocess.run(
        ["/usr/bin/mksquashfs", str(src), str(image), "-noappend", "-noI", "-noD", "-noF",
         "-noX", "-quiet"], check=True, capture_output=True,
    )  # fmt: skip
    image.chmod(0o644)
    shutil.rmtree(src)
    drop_pages(image)
    return image


def mount_tmpfs(node: CoopNode, mib: int) -> None:
    cache = node.root / "cache"
    subprocess.run(
        ["/usr/bin/mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0755", "tmpfs", str(cache)],
        check=True,
    )


def reset(node: CoopNode) -> None:
    """Forget the node's cached copy and state (nothing is mounted: namespaces ended)."""
    for path in (node.root / "cache").iterdir():
        if path.is_file():
            path.unlink()
        else:
            shutil.rmtree(path)
    for path in (node.root / "state").iterdir():
        path.unlink()


def in_throttle(throttle: Throttle | None, spawn: Callable[[], T]) -> T:
    """SPAWN's processes, born in THROTTLE's cgroup (if any)."""
    if throttle:
        throttle.enter()
    try:
        return spawn()
    finally:
        if throttle:
            throttle.leave()


def prepare(cluster: Cluster, node: CoopNode, throttle: Throttle | None) -> tuple[float, int]:
    """`coop prepare img` on NODE, pages dropped first: (seconds, shared bytes read)."""
    drop_pages(cluster.datadir / "img.sqfs")
    before = cluster.shared.bytes_read()
    started = time.monotonic()
    proc = in_throttle(throttle, lambda: subprocess.Popen(
        [str(CLI), "coop", "prepare", "img"], env=node.environ(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd="/",
    ))  # fmt: skip
    _, err = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{node.name}: coop prepare failed: {err.strip()}")
    return time.monotonic() - started, cluster.shared.bytes_read() - before


def stage_all(
    cluster: Cluster, nodes: list[CoopNode], images: list[Path], throttle: Throttle | None
) -> tuple[float, int]:
    """Stage on NODES at once: (seconds until the last one mounted, shared bytes read)."""
    for image in images:
        drop_pages(image)
    before = cluster.shared.bytes_read()
    started = time.time()
    # The nodes' processes are born in the throttle's cgroup.
    procs = in_throttle(throttle, lambda: [node.spawn_prestage("img") for node in nodes])
    for node, proc in zip(nodes, procs):
        _, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"{node.name}: prestage failed: {err.strip()}")
    shared = cluster.shared.bytes_read() - before
    last = max(e["ts"] for n in nodes for e in n.events("mount"))
    return last - started, shared


Results = dict[str, tuple[float, int, float]]
T = TypeVar("T")


def cpu_seconds() -> float:
    """CPU time of this process's finished children (the nodes' processes), user + system."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cluster(
    count: int, mib: int, base: Path, rates: list[int | None], prepared: bool
) -> tuple[int, list[tuple[int | None, tuple[float, float] | None, Results, str]]]:
    """(image size, per rate: (rate, throttle check, {mode: (seconds, shared bytes, CPU
    seconds)}, the cooperative nodes' coop events))."""
    base.mkdir()
    cluster = Cluster(base, count, size_mib=(count + 1) * (mib + 32) + 256)
    throttle: Throttle | None = None
    left: list[str] = []
    try:
        for node in cluster.nodes:
            mount_tmpfs(node, mib + 128)
            node.configure(capacity=f"{mib + 64}MiB")
        image = build_image(cluster.datadir, mib, base)
        size = image.stat().st_size
        # Independent mode: each node reads a copy of its own (same bytes, its own pages).
        own = [cluster.shared.mountpoint / f"data{i}" for i in range(count)]
        for d in own:
            d.mkdir(mode=0o755)
            shutil.copyfile(image, d / image.name)
            (d / image.name).chmod(0o644)
            drop_pages(d / image.name)
        runs = []
        notes: list[str] = []
        for rate in rates:
            check = None
            if rate is not None:
                throttle = Throttle(cluster.shared.device, rate)
                check = check_throttle(throttle, image)
                seconds, expected = check
                if abs(seconds / expected - 1) > 0.10:
                    raise SystemExit(
                        f"coop_staging.py: the throttle does not bite: reading {size} bytes at "
                        f"{rate / 1e6:.0f} MB/s took {seconds:.2f} s, not {expected:.2f} s +-10 %"
                    )
            results: Results = {}
            modes = [
                ("single", cluster.nodes[:1], False),
                ("independent", cluster.nodes, False),
                ("cooperative", cluster.nodes, True),
            ]
            if prepared:
                modes.append(("prepared", cluster.nodes, True))
            event_notes = []
            for mode, nodes, coop in modes:
                for i, node in enumerate(cluster.nodes):
                    # The defaults of a real node (the test harness shortens the stall time).
                    coop_cfg = {"enabled": coop, "stall_seconds": 30, "seed_seconds": 120}
                    datadir = own[i] if mode == "independent" else cluster.datadir
                    node.configure(coop=coop_cfg, datadir=str(datadir))
                    reset(node)
                # A cooperative run of an earlier rate left its digest and peers behind.
                shutil.rmtree(cluster.datadir / ".scratch-stage-coop", ignore_errors=True)
                images = [image] + [d / image.name for d in own]
                if mode == "prepared":
                    took, read = prepare(cluster, cluster.nodes[0], throttle)
                    results["prepare"] = (took, read, 0.0)
                cpu = cpu_seconds()
                seconds, shared = stage_all(cluster, nodes, images, throttle)
                results[mode] = (seconds, shared, cpu_seconds() - cpu)
                if coop:
                    kinds = ("coop-lease", "coop-fetch", "coop-stalled", "coop-bad-copy",
                             "coop-digest-refused")  # fmt: skip
                    seen = {k: sum(len(n.events(k)) for n in nodes) for k in kinds}
                    bad = {e.get("reason", "") for n in nodes for e in n.events("coop-bad-copy")}
                    checks = [e["check_seconds"] for n in nodes for e in n.events("coop-fetched")]
                    reads = [e for n in nodes for e in n.events("coop-read")]
                    event_notes.append(
                        f"{mode}: "
                        + ", ".join(f"{k} {v}" for k, v in seen.items())
                        + (f", fetchers' sha256 check {min(checks):.2f}-{max(checks):.2f} s"
                           if checks else "")
                        + "".join(f", reader's read {e['seconds']:.2f} s, peers had up to "
                                  f"{e['peer_pieces']} pieces while it read" for e in reads)
                        + "".join(f"\n  bad copy: {reason}" for reason in sorted(bad))
                    )  # fmt: skip
            notes.append("\n".join(event_notes))
            if throttle:
                for node in cluster.nodes:
                    node.kill()
                gone = throttle.close()
                left += [gone] if gone else []
                throttle = None
            runs.append((rate, check, results, notes[-1]))
        return size, runs
    finally:
        left += cluster.close()
        if throttle:
            gone = throttle.close()
            left += [gone] if gone else []
        for node in cluster.nodes:
            subprocess.run(["/usr/bin/umount", "-l", str(node.root / "cache")], capture_output=True)
        if left:
            print("left behind:", left, file=sys.stderr)


# --- engines ---


def make_torrent(path: Path) -> tuple[bytes, int]:
    lt = torrent.load()
    size = path.stat().st_size
    hasher = torrent.PieceHasher(size)
    with open(path, "rb") as f:
        while chunk := f.read(8 * MIB):
            hasher.update(chunk)
    pieces, _ = hasher.finish()
    return torrent.make_torrent(lt, path.name, size, hasher.length, pieces), size


def libtorrent_swarm(seed_file: Path, body: bytes, peers: int, work: Path) -> float:
    lt = torrent.load()
    sessions = []
    seed = torrent.Session(lt, "127.0.0.10", 0)
    seed.add(body, str(seed_file), seeding=True)
    started = time.monotonic()
    try:
        for i in range(peers):
            d = work / f"lt{i}"
            d.mkdir()
            s = torrent.Session(lt, f"127.0.0.{11 + i}", 0)
            s.add(body, str(d / seed_file.name), seeding=False)
            sessions.append(s)
        addresses = [("127.0.0.10", seed.port)] + [
            (f"127.0.0.{11 + i}", s.port) for i, s in enumerate(sessions)
        ]
        while not all(s.progress()[1] for s in sessions):
            for s in sessions:
                s.connect(addresses)
            time.sleep(0.1)
        return time.monotonic() - started
    finally:
        for s in [seed, *sessions]:
            s.close()


def aria2_swarm(seed_file: Path, body: bytes, peers: int, work: Path) -> float | None:
    aria2c, tracker = shutil.which("aria2c"), shutil.which("opentracker")
    if not aria2c or not tracker:
        return None
    port = 16969
    info = dict(torrent.load().bdecode(body))
    info[b"announce"] = f"http://127.0.0.1:{port}/announce".encode()
    tfile = work / "a.torrent"
    tfile.write_bytes(torrent.load().bencode(info))
    procs: list[subprocess.Popen[bytes]] = []
    devnull = subprocess.DEVNULL

    def aria(index: int, directory: Path, seeding: bool) -> subprocess.Popen[bytes]:
        argv = [
            aria2c, "--dir", str(directory), "--interface", f"127.0.0.{10 + index}",
            "--listen-port", str(17000 + index), "--enable-dht=false",
            "--bt-enable-lpd=false", "--enable-peer-exchange=false", "--bt-require-crypto=true",
            "--seed-time=600", "--seed-ratio=0.0", "--bt-tracker-interval=1",
            "--console-log-level=error",
            "--summary-interval=0", "--file-allocation=none", "--check-certificate=false",
            "--bt-max-peers=0", str(tfile),
        ]  # fmt: skip
        if seeding:
            argv[1:1] = ["--check-integrity=true", "--bt-seed-unverified=true"]
        return subprocess.Popen(argv, stdout=devnull, stderr=devnull)

    # Debian's opentracker serves whitelisted torrents only, refuses to run as root, and
    # reads its whitelist after chroot(2) into -d.
    jail = work / "tracker"
    jail.mkdir(mode=0o755)
    (jail / "wl").write_text(torrent.info_hash(torrent.load(), body) + "\n")
    (jail / "wl").chmod(0o644)
    procs.append(subprocess.Popen(
        [tracker, "-i", "127.0.0.1", "-p", str(port), "-P", str(port), "-w", "/wl",
         "-d", str(jail), "-u", "nobody"], stdout=devnull, stderr=devnull,
    ))  # fmt: skip
    try:
        time.sleep(0.5)
        procs.append(aria(0, seed_file.parent, True))
        started = time.monotonic()
        dirs = []
        for i in range(peers):
            d = work / f"a{i}"
            d.mkdir()
            dirs.append(d)
            procs.append(aria(i + 1, d, False))
        want = seed_file.stat().st_size
        while True:
            done = all(
                (d / seed_file.name).exists()
                and not (d / f"{seed_file.name}.aria2").exists()
                and (d / seed_file.name).stat().st_size == want
                for d in dirs
            )
            if done:
                return time.monotonic() - started
            if time.monotonic() - started > 3600:
                return float("nan")
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()


def run_engines(count: int, mib: int, base: Path) -> tuple[float, float | None]:
    tmp = base / "engines"
    tmp.mkdir()
    subprocess.run(["/usr/bin/mount", "-t", "tmpfs", "-o", f"size={(count + 1) * (mib + 16)}m",
                    "tmpfs", str(tmp)], check=True)  # fmt: skip
    try:
        seed_dir = tmp / "seed"
        seed_dir.mkdir()
        seed_file = seed_dir / "img.sqfs"
        with open(seed_file, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(MIB))
        body, _ = make_torrent(seed_file)
        lt_work = tmp / "lt"
        lt_work.mkdir()
        lt_time = libtorrent_swarm(seed_file, body, count - 1, lt_work)
        shutil.rmtree(lt_work)
        aria_work = tmp / "aria"
        aria_work.mkdir()
        aria_time = aria2_swarm(seed_file, body, count - 1, aria_work)
        return lt_time, aria_time
    finally:
        subprocess.run(["/usr/bin/umount", "-l", str(tmp)], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--engines", action="store_true")
    parser.add_argument("--no-staging", action="store_true")
    parser.add_argument(
        "--prepared", action="store_true",
        help="also run the cooperative mode after `coop prepare` (pipelined transfer)",
    )  # fmt: skip
    parser.add_argument(
        "--shared-rate", type=parse_rate, nargs="+", default=[None], metavar="RATE",
        help="cap shared storage's reads at RATE for all nodes together (e.g. 100MB/s)",
    )  # fmt: skip
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("coop_staging.py: needs root (loop devices, mounts, namespaces)")
    if torrent.load() is None:
        raise SystemExit("coop_staging.py: libtorrent is not installed")
    print(f"image {args.size_mib} MiB, machine: {os.cpu_count()} CPUs")
    for count in args.nodes:
        base = Path(tempfile.mkdtemp(prefix="coop-bench-"))
        try:
            if not args.no_staging:
                size, runs = run_cluster(
                    count, args.size_mib, base / "stage", args.shared_rate, args.prepared
                )
                for rate, check, r, coop_events in runs:
                    t1 = r["single"][0]
                    speed = "unthrottled" if rate is None else f"{rate / 1e6:g} MB/s"
                    print(f"\n{count} nodes, shared storage {speed}")
                    if check:
                        took, want = check
                        print(f"throttle check: reading the image alone took {took:.2f} s, "
                              f"size/rate = {want:.2f} s ({took / want:.3f}x)")  # fmt: skip
                    head = ("mode", "shared bytes", "x image", "time s", "x single",
                            "CPU s/GiB")  # fmt: skip
                    print("{:<12} {:>14} {:>8} {:>8} {:>9} {:>10}".format(*head))
                    for mode in ("single", "independent", "cooperative", "prepared"):
                        if mode not in r:
                            continue
                        seconds, shared, cpu = r[mode]
                        moved = size * (1 if mode == "single" else count) / (1 << 30)
                        print(f"{mode:<12} {shared:>14} {shared / size:>8.2f} {seconds:>8.2f} "
                              f"{seconds / t1:>9.2f} {cpu / moved:>10.2f}")  # fmt: skip
                    if "prepare" in r:
                        took, read, _ = r["prepare"]
                        print(f"coop prepare (before `prepared`, not in its time): {took:.2f} s, "
                              f"{read} shared bytes ({read / size:.2f}x)")  # fmt: skip
                    print(f"cooperative nodes' events:\n{coop_events}")
                    print(
                        "CPU s/GiB: CPU seconds (user + system) of all node processes per GiB "
                        "that ends up in the nodes' caches"
                    )
                print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            if args.engines:
                lt_time, aria_time = run_engines(count, args.size_mib, base)
                aria = "n/a (aria2c or opentracker missing)" if aria_time is None else (
                    f"{aria_time:.2f} s ({aria_time / lt_time:.2f}x libtorrent)"
                )  # fmt: skip
                print(f"engines, 1 seed -> {count - 1} peers: libtorrent {lt_time:.2f} s, "
                      f"aria2c {aria}")  # fmt: skip
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print(
        "\nindependent: every node copies the whole image from a datadir copy of its own, as "
        "a shared filesystem serves N clients N x (one page cache here would share pages)."
    )


if __name__ == "__main__":
    main()
