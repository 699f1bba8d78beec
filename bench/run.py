#!/usr/bin/env python3
"""nodeimg's build benchmark: `nodeimg build rpi4` against the standard tools.

Builds a realistic usr-merged rootfs of the requested sizes (the pinned test
rootfs, which has the kernel, modules, firmware and busybox the rpi4 board
needs, plus one k3s-sized 70 MiB binary, shared libraries and documentation
taken from this machine's /usr), then, in alternating runs:

  nodeimg    nodeimg build rpi4 --rootfs DIR (one process)
  reference  the same layout with the standard tools: mksquashfs of /usr at the
             same compressor, level and block size (all cores), mkfs.vfat +
             mcopy for the boot partition, a gzip'd cpio initramfs, mke2fs -d
             for the data partition, sfdisk for the MBR, dd conv=sparse, and
             `sync` of the image (nodeimg's image is on the disk when it is
             done: it syncs its outputs before it puts them in place)

and prints, for each, the median of the runs: wall time, CPU time (user+sys of
every process), peak RSS (the largest single process), the squashfs size, the
image's allocated bytes (du) and the bytes its filesystems use; then the
ratios nodeimg / reference, and the median of each run's own wall-time ratio
(its two builds ran back to back). With --second-node it also times a second node's
build from the same rootfs (the system image cache) against the first.

Only the standard library; numbers, not pass/fail (see docs/performance.md).

usage: bench/run.py [--sizes 500M,2G] [--runs 3] [--level N] [--work DIR]
                    [--nodeimg PATH] [--rootfs TEST_ROOTFS.tar.zst] [--second-node]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1024 * 1024
BLOCK_SIZE = 128 * 1024
EPOCH = "1700000000"


def parse_size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    s = s.strip().upper()
    if s and s[-1] in units:
        return int(float(s[:-1]) * units[s[-1]])
    return int(s)


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def die(msg):
    print(f"bench: error: {msg}", file=sys.stderr)
    sys.exit(1)


# ----------------------------------------------------------------- measuring


class Meter:
    """Runs processes one after another; sums wall and CPU, keeps the peak RSS."""

    def __init__(self):
        self.wall = 0.0
        self.cpu = 0.0
        self.rss = 0  # bytes, largest single process tree

    def run_rusage(self, argv, env=None, cwd=None, stdout_path=None):
        """Like run, but measures the child's own rusage with wait4."""
        out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
        start = time.monotonic()
        p = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.PIPE, cwd=cwd)
        err = p.stderr.read()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        self.wall += time.monotonic() - start
        if stdout_path:
            out.close()
        if p.returncode != 0:
            die(f"{' '.join(map(str, argv))} failed ({p.returncode}): {err.decode(errors='replace').strip()}")
        self.cpu += ru.ru_utime + ru.ru_stime
        self.rss = max(self.rss, ru.ru_maxrss * 1024)
        return err


# ----------------------------------------------------------------- the rootfs


def host_files(roots, exclude_prefixes=()):
    """Regular files under roots, in a stable order."""
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if any(dirpath.startswith(p) for p in exclude_prefixes):
                dirnames[:] = []
                continue
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                if os.path.isfile(p) and not os.path.islink(p):
                    yield p


def tree_bytes(root):
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def make_rootfs(dest, test_rootfs, target):
    """Test rootfs + a 70 MiB binary + host libraries and docs, up to `target` bytes."""
    stamp = os.path.join(dest, ".bench-stamp")
    want = f"v2 {os.path.abspath(test_rootfs)} {os.path.getsize(test_rootfs)} {target}"
    if os.path.exists(stamp) and open(stamp).read() == want:
        return tree_bytes(dest)
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    subprocess.run(["tar", "--zstd", "-xf", test_rootfs, "-C", dest], check=True)
    # One large binary the size of k3s (about 70 MB): the start of the largest
    # executable on this machine, so it compresses like real code.
    biggest = max((p for p in host_files(["/usr/bin"])), key=os.path.getsize)
    with open(biggest, "rb") as src, open(os.path.join(dest, "usr/bin/k3s-sized"), "wb") as dst:
        left = 70 * MIB
        while left:
            chunk = src.read(min(left, MIB))
            if not chunk:
                src.seek(0)
                continue
            dst.write(chunk)
            left -= len(chunk)
    os.chmod(os.path.join(dest, "usr/bin/k3s-sized"), 0o755)
    total = tree_bytes(dest)
    # Thousands of small and medium files: about 150 MB of shared libraries,
    # then documentation, headers and scripting-language libraries.
    sources = [("/usr/lib/x86_64-linux-gnu", 150 * MIB), ("/usr/share/doc", None),
               ("/usr/include", None), ("/usr/share/perl", None), ("/usr/lib/python3", None),
               ("/root/.pyenv/versions", None), ("/usr/lib", None), ("/usr/share", None),
               ("/root/.rustup", None)]
    seen = set()
    for root, cap in sources:
        taken = 0
        for p in host_files([root], exclude_prefixes=(os.path.realpath(dest),)):
            if total >= target or (cap is not None and taken >= cap):
                break
            real = os.path.realpath(p)
            if real in seen:
                continue
            seen.add(real)
            size = os.path.getsize(p)
            if size > 64 * MIB:
                continue
            out = os.path.join(dest, "usr/share/bench-host", os.path.relpath(p, "/"))
            os.makedirs(os.path.dirname(out), exist_ok=True)
            try:
                shutil.copyfile(p, out)
            except OSError:
                continue
            total += size
            taken += size
    if total < target:
        die(f"could only gather {human(total)} of host files for a {human(target)} rootfs")
    open(stamp, "w").write(want)
    return total


# ----------------------------------------------------------------- reading images


def mbr_partitions(image):
    with open(image, "rb") as f:
        mbr = f.read(512)
    parts = []
    for i in range(4):
        e = mbr[446 + 16 * i: 446 + 16 * (i + 1)]
        ptype = e[4]
        start, count = struct.unpack_from("<II", e, 8)
        if ptype:
            parts.append((ptype, start * 512, count * 512))
    return parts


def fat_used(image, off):
    with open(image, "rb") as f:
        f.seek(off)
        bs = f.read(512)
        bps, spc, reserved, nfats = struct.unpack_from("<HBHB", bs, 11)
        total_sectors = struct.unpack_from("<I", bs, 32)[0]
        fat_sectors = struct.unpack_from("<I", bs, 36)[0]
        f.seek(off + reserved * bps)
        fat = f.read(fat_sectors * bps)
    clusters = (total_sectors - reserved - nfats * fat_sectors) // spc
    used = sum(1 for i in range(2, min(clusters + 2, len(fat) // 4))
               if struct.unpack_from("<I", fat, 4 * i)[0] & 0x0FFFFFFF)
    meta = (reserved + nfats * fat_sectors) * bps
    return meta + used * spc * bps


def ext4_used(image, off):
    with open(image, "rb") as f:
        f.seek(off + 1024)
        sb = f.read(1024)
    blocks = struct.unpack_from("<I", sb, 0x4)[0] | (struct.unpack_from("<I", sb, 0x150)[0] << 32)
    free = struct.unpack_from("<I", sb, 0xC)[0] | (struct.unpack_from("<I", sb, 0x158)[0] << 32)
    bsize = 1024 << struct.unpack_from("<I", sb, 0x18)[0]
    return (blocks - free) * bsize


def squashfs_size(image, off):
    with open(image, "rb") as f:
        f.seek(off)
        sb = f.read(96)
    if sb[:4] != b"hsqs":
        die(f"{image}: no squashfs at offset {off}")
    return struct.unpack_from("<Q", sb, 40)[0]  # bytes_used


def image_facts(image):
    parts = mbr_partitions(image)
    if len(parts) < 4:
        die(f"{image}: expected 4 MBR partitions, found {len(parts)}")
    boot, sys_a, _, data = parts[:4]
    sq = squashfs_size(image, sys_a[1])
    used = fat_used(image, boot[1]) + sq + ext4_used(image, data[1]) + 512
    st = os.stat(image)
    return {"squashfs": sq, "fs_used": used, "allocated": st.st_blocks * 512, "size": st.st_size}


# ----------------------------------------------------------------- the two pipelines


def nodeimg_build(nodeimg, rootfs, out, level, data_dir, extra=()):
    shutil.rmtree(out, ignore_errors=True)
    m = Meter()
    env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH)
    argv = [nodeimg]
    if data_dir:
        argv += ["--data-dir", data_dir]
    argv += ["build", "rpi4", "--rootfs", rootfs, "-o", out]
    if level is not None:
        argv += ["--compression-level", str(level)]
    argv += list(extra)
    m.run_rusage(argv, env=env)
    images = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f.endswith(".img")]
    if len(images) != 1:
        die(f"nodeimg wrote {len(images)} images into {out}")
    return m, image_facts(images[0])


def reference_build(rootfs, work, level, layout):
    """The same layout with the standard tools, each measured."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    m = Meter()
    env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH, E2FSPROGS_FAKE_TIME=EPOCH)
    sq = os.path.join(work, "system.squashfs")
    m.run_rusage(["mksquashfs", os.path.join(rootfs, "usr"), sq, "-noappend", "-quiet",
                  "-no-progress", "-comp", "zstd", "-Xcompression-level", str(level),
                  "-b", str(BLOCK_SIZE), "-processors", str(os.cpu_count())], env=env)
    # initramfs: busybox and the kernel's modules directory, gzip'd newc
    boot = os.path.join(rootfs, "boot")
    kernel = next(os.path.join(boot, f) for f in sorted(os.listdir(boot)) if f.startswith("vmlinuz"))
    initrd = os.path.join(work, "initrd.img")
    listing = os.path.join(work, "initrd.list")
    with open(listing, "w") as f:
        for p in ["usr/bin/busybox"]:
            if os.path.exists(os.path.join(rootfs, p)):
                f.write(p + "\n")
    cpio_out = os.path.join(work, "initrd.cpio")
    with open(listing, "rb") as lst, open(cpio_out, "wb") as out:
        start = time.monotonic()
        p = subprocess.Popen(["cpio", "-o", "-H", "newc", "--quiet"], cwd=rootfs, stdin=lst, stdout=out)
        _, status, ru = os.wait4(p.pid, 0)
        m.wall += time.monotonic() - start
        m.cpu += ru.ru_utime + ru.ru_stime
        m.rss = max(m.rss, ru.ru_maxrss * 1024)
    m.run_rusage(["gzip", "-n", "-9", "-f", cpio_out])
    os.replace(cpio_out + ".gz", initrd)
    # boot partition
    vfat = os.path.join(work, "boot.vfat")
    m.run_rusage(["mkfs.vfat", "-F", "32", "-n", "NODEIMGBOOT", "-i", "12345678",
                  "-C", vfat, str(layout["boot"] // 1024)])
    files = [kernel, initrd]
    for name in ["usr/lib/raspi-firmware/start4.elf", "usr/lib/raspi-firmware/fixup4.dat"]:
        if os.path.exists(os.path.join(rootfs, name)):
            files.append(os.path.join(rootfs, name))
    dtbs = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(rootfs, "usr/lib")) for f in fs
            if f == "bcm2711-rpi-4-b.dtb"]
    files += dtbs[:1]
    cmdline = os.path.join(work, "cmdline.txt")
    open(cmdline, "w").write("console=ttyS1,115200 console=tty0 rootwait\n")
    files.append(cmdline)
    m.run_rusage(["mcopy", "-i", vfat, *files, "::/"])
    # data partition: the rootfs without /usr and /boot
    data_dir = os.path.join(work, "data")
    os.makedirs(data_dir)
    for name in os.listdir(rootfs):
        if name in ("usr", "boot") or name.startswith(".bench"):
            continue
        src = os.path.join(rootfs, name)
        if os.path.islink(src):
            os.symlink(os.readlink(src), os.path.join(data_dir, name))
        elif os.path.isdir(src):
            shutil.copytree(src, os.path.join(data_dir, name), symlinks=True)
    ext4 = os.path.join(work, "data.ext4")
    m.run_rusage(["mke2fs", "-q", "-t", "ext4", "-T", "default", "-L", "nodeimg-data",
                  "-U", "0b9e0c55-5c1d-4d1e-8f1a-2a1f3e1d5c6b", "-E", "lazy_itable_init=1,lazy_journal_init=1",
                  "-d", data_dir, ext4, str(layout["data"] // 1024) + "k"], env=env)
    # the disk
    img = os.path.join(work, "rpi4.img")
    with open(img, "wb") as f:
        f.truncate(layout["total"])
    script = os.path.join(work, "sfdisk.script")
    s = MIB // 512
    with open(script, "w") as f:
        f.write("label: dos\nlabel-id: 0x12345678\n")
        start = s
        for size, ptype in ((layout["boot"], "c"), (layout["system"], "83"), (layout["system"], "83"),
                            (layout["data"], "83")):
            f.write(f"start={start}, size={size // 512}, type={ptype}\n")
            start += size // 512
    with open(script, "rb") as f:
        start = time.monotonic()
        p = subprocess.Popen(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", img], stdin=f,
                             stdout=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        m.wall += time.monotonic() - start
        m.cpu += ru.ru_utime + ru.ru_stime
        if os.waitstatus_to_exitcode(status) != 0:
            die("sfdisk failed")
    offset = MIB
    for part, size in ((vfat, layout["boot"]), (sq, layout["system"]), (None, layout["system"]),
                       (ext4, layout["data"])):
        if part:
            m.run_rusage(["dd", f"if={part}", f"of={img}", "bs=4M", "conv=sparse,notrunc",
                          "oflag=seek_bytes", f"seek={offset}", "status=none"])
        offset += size
    # On the disk before it counts as built, as nodeimg's image is (nodeimg
    # syncs its outputs before it puts them in place): without this the
    # image's writeback would happen after the clock stops.
    before = m.wall
    m.run_rusage(["sync", img])
    m.sync = m.wall - before
    return m, image_facts(img)


def rpi4_layout(data_dir, total):
    board = open(os.path.join(data_dir, "boards/rpi4.toml")).read() if data_dir else ""
    def get(key, default):
        for line in board.splitlines():
            if line.split("=")[0].strip() == key:
                return parse_size(line.split("=")[1].split("#")[0].strip().strip('"'))
        return default
    boot = get("boot_size", 256 * MIB)
    system = get("system_size", 640 * MIB)
    data = total - MIB - boot - 2 * system
    return {"total": total, "boot": boot, "system": system, "data": data}


def bench_data_dir(work, system_size):
    """The repository's boards and overlays, rpi4's system slot raised to fit the rootfs."""
    d = os.path.join(work, "data-dir")
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(os.path.join(REPO, "boards"), os.path.join(d, "boards"))
    shutil.copytree(os.path.join(REPO, "overlays"), os.path.join(d, "overlays"), symlinks=True)
    p = os.path.join(d, "boards/rpi4.toml")
    lines = []
    for line in open(p).read().splitlines():
        if line.split("=")[0].strip() == "system_size":
            line = f'system_size = "{system_size // MIB}M"'
        if line.split("=")[0].strip() == "default_size":
            line = f'default_size = "{(MIB + 256 * MIB + 2 * system_size + 512 * MIB) // MIB}M"'
        lines.append(line)
    open(p, "w").write("\n".join(lines) + "\n")
    return d


# ----------------------------------------------------------------- report


def median(xs):
    return statistics.median(xs)


def report(size_label, runs):
    keys = [("wall", "wall time", lambda v: f"{v:.2f} s"),
            ("cpu", "CPU time", lambda v: f"{v:.2f} s"),
            ("rss", "peak RSS", human),
            ("squashfs", "squashfs", human),
            ("allocated", "image allocated (du)", human),
            ("fs_used", "filesystems use", human)]
    print(f"\n== rootfs {size_label}: median of {len(runs['nodeimg'])} alternating runs")
    print(f"{'':24}{'nodeimg':>14}{'reference':>14}{'ratio':>9}")
    med = {}
    for k, label, fmt in keys:
        a = median([r[k] for r in runs["nodeimg"]])
        b = median([r[k] for r in runs["reference"]])
        med[k] = (a, b)
        print(f"{label:24}{fmt(a):>14}{fmt(b):>14}{a / b if b else float('nan'):>9.3f}")
    a_alloc = median([r["allocated"] / r["fs_used"] for r in runs["nodeimg"]])
    print(f"{'allocated / fs used':24}{a_alloc:>14.3f}")
    # Each run's two builds ran one right after the other, on the machine as
    # it then was: their ratio does not move with the machine's speed from
    # one run to the next as the medians' ratio can.
    paired = [n["wall"] / r["wall"] for n, r in zip(runs["nodeimg"], runs["reference"])]
    med["wall_paired"] = median(paired)
    print(f"{'wall time, run by run':24}{'':>28}{median(paired):>9.3f}  "
          f"(median of {', '.join(f'{p:.3f}' for p in paired)})")
    return med


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="500M,2G", help="rootfs sizes, comma-separated (default 500M,2G)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--level", type=int, default=None,
                    help="zstd level for both (default: nodeimg's default, read from its --help)")
    ap.add_argument("--work", default=os.path.join(REPO, "target/bench"))
    ap.add_argument("--nodeimg", default=None, help="the binary (default: cargo build --release)")
    ap.add_argument("--rootfs", default=os.environ.get("NODEIMG_TEST_ROOTFS",
                                                        os.path.join(REPO, "test-images/build/rootfs.tar.zst")))
    ap.add_argument("--second-node", action="store_true",
                    help="also time a second node's build from the same rootfs against the first")
    ap.add_argument("--nodeimg-only", action="store_true",
                    help="skip the reference pipeline (quick checks; prints no ratios)")
    args = ap.parse_args()

    for tool in ["mksquashfs", "mkfs.vfat", "mcopy", "mke2fs", "sfdisk", "dd", "cpio", "gzip", "tar"]:
        if not shutil.which(tool):
            die(f"missing tool {tool} (squashfs-tools, dosfstools, mtools, e2fsprogs, fdisk, cpio)")
    if not os.path.exists(args.rootfs):
        die(f"no test rootfs at {args.rootfs}: run test-images/make-rootfs.sh or pass --rootfs")
    nodeimg = args.nodeimg
    if not nodeimg:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
        nodeimg = os.path.join(REPO, "target/release/nodeimg")
    help_text = subprocess.run([nodeimg, "build", "--help"], capture_output=True, text=True).stdout
    has_level = "--compression-level" in help_text
    level = args.level
    if level is None:
        m = re.search(r"--compression-level.*?\[default: (\d+)\]", help_text, re.S)
        if m:
            level = int(m.group(1))
        elif has_level:
            die("cannot read the default of --compression-level from `nodeimg build --help`; pass --level")
        else:
            print("bench: note: this nodeimg has no --compression-level; both use zstd level 15, "
                  "the level it writes", file=sys.stderr)
            level = 15
    os.makedirs(args.work, exist_ok=True)
    print(f"nodeimg {nodeimg}; zstd level {level}, block size {BLOCK_SIZE // 1024} KiB; "
          f"{os.cpu_count()} cores; {args.runs} alternating runs")

    summary = {}
    for label in args.sizes.split(","):
        target = parse_size(label)
        rootfs = os.path.join(args.work, f"rootfs-{label}")
        got = make_rootfs(rootfs, args.rootfs, target)
        files = sum(len(fs) for _, _, fs in os.walk(rootfs))
        print(f"\nrootfs {label}: {human(got)} in {files} files at {rootfs}")
        # The system slot must hold the compressed /usr: size it to the content.
        system = max(640 * MIB, (got // MIB + 64) * MIB)
        data_dir = bench_data_dir(args.work, system)
        layout = rpi4_layout(data_dir, MIB + 256 * MIB + 2 * system + 512 * MIB)
        runs = {"nodeimg": [], "reference": []}
        for i in range(args.runs):
            order = ["reference", "nodeimg"] if i % 2 == 0 else ["nodeimg", "reference"]
            for which in order:
                if which == "reference" and args.nodeimg_only:
                    continue
                if which == "nodeimg":
                    # Every run builds the system image: none reuses another's.
                    m, facts = nodeimg_build(nodeimg, rootfs, os.path.join(args.work, "out-nodeimg"),
                                             level if has_level else None, data_dir,
                                             ("--no-cache",) if "--no-cache" in help_text else ())
                else:
                    m, facts = reference_build(rootfs, os.path.join(args.work, "out-reference"), level, layout)
                r = {"wall": m.wall, "cpu": m.cpu, "rss": m.rss, **facts}
                runs[which].append(r)
                synced = f", of which {m.sync:.2f} s its sync" if hasattr(m, "sync") else ""
                print(f"  run {i + 1} {which:9}: {m.wall:7.2f} s wall{synced}, {m.cpu:7.2f} s CPU, "
                      f"{human(m.rss):>10} RSS, squashfs {human(facts['squashfs'])}", flush=True)
        entry = {}
        if not args.nodeimg_only:
            med = report(label, runs)
            paired = med.pop("wall_paired")
            entry = {k: {"nodeimg": v[0], "reference": v[1]} for k, v in med.items()}
            entry["wall_ratio_run_by_run"] = paired
        if args.second_node:
            entry["second_node"] = second_node(nodeimg, rootfs, args.work, level if has_level else None, data_dir)
        summary[label] = entry
    out = os.path.join(args.work, "results.json")
    json.dump(summary, open(out, "w"), indent=2)
    print(f"\nresults: {out}")


def second_node(nodeimg, rootfs, work, level, data_dir):
    """Two nodes of one cluster built one after another, each its own
    `nodeimg build --join cluster.yaml --node N` with one fresh system cache
    (XDG_CACHE_HOME): the first fills it, the second reuses the system image.
    The second's wall time over the first's."""
    d = os.path.join(work, "cluster")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    standin = os.path.join(REPO, "test-images/k3s-standin")
    # A token of k3s's short form (the K10 form must be K10<64 hex>::user:password).
    open(os.path.join(d, "token"), "w").write("bench-cluster-secret-0123456789\n")
    open(os.path.join(d, "cluster.yaml"), "w").write(
        "server: https://10.0.0.1:6443\ntoken_file: token\n"
        f"k3s:\n  source: file\n  path: {standin}\n"
        "nodes:\n  - name: node-a\n  - name: node-b\n")
    cache = os.path.join(work, "cache")
    shutil.rmtree(cache, ignore_errors=True)
    env_extra = ("--join", os.path.join(d, "cluster.yaml"))
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = cache
    try:
        first, _ = nodeimg_build(nodeimg, rootfs, os.path.join(work, "out-a"), level, data_dir,
                                 env_extra + ("--node", "node-a"))
        second, _ = nodeimg_build(nodeimg, rootfs, os.path.join(work, "out-b"), level, data_dir,
                                  env_extra + ("--node", "node-b"))
    finally:
        if saved is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = saved
    states = []
    for out, node in [("out-a", "node-a"), ("out-b", "node-b")]:
        manifest = os.path.join(work, out, f"rpi4-{node}", "build.json")
        states.append(json.load(open(manifest)).get("system_cache", "?"))
    ratio = second.wall / first.wall
    print(f"second node: first {first.wall:.2f} s ({states[0]}), second {second.wall:.2f} s "
          f"({states[1]}), ratio {ratio:.3f}")
    return {"first": first.wall, "second": second.wall, "ratio": ratio,
            "system_cache": states}


if __name__ == "__main__":
    main()
