//! Which CPUs take the completion interrupts of the block devices under some paths.
//!
//! A device with one hardware queue (virtio-blk on a small VM, many SATA and SAS disks) has its
//! completions signalled on one CPU. A reactor on another CPU then learns of each of its reads
//! through a cross-CPU wake-up (an IPI; on a VM a halted vCPU exits and re-enters), which at
//! queue depth 1 is a large share of the request: on the 2-vCPU test box (virtio-blk interrupts
//! on CPU 1), 4 KiB random reads at QD1 through `ringpool serve` had a p50 of 80–83 us with the
//! connection on the reactor of CPU 1 and 107–109 us on the reactor of CPU 0, alternated
//! (perf/results/README-nbd.md). The NBD server uses [`completion_cpus`] to put a connection on
//! such a reactor when it has the choice.
//!
//! The topology comes from sysfs and procfs: the device (for a file: the device holding its
//! file system) is resolved under `/sys/dev/block/MAJ:MIN`, then its ancestors are searched for
//! the interrupt-raising device (`msi_irqs/` or `irq`), whose interrupts' effective affinity is
//! read from `/proc/irq/N/`. Anything missing (a loop or device-mapper device, a container
//! without sysfs) means "no preference", never an error.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The CPUs that take the completion interrupts of the devices behind `paths` (block devices
/// or files), or `None` when that is unknown for any of them. The union over the devices.
pub fn completion_cpus<P: AsRef<Path>>(paths: &[P]) -> Option<BTreeSet<usize>> {
    completion_cpus_at(Path::new("/sys"), Path::new("/proc"), paths)
}

/// [`completion_cpus`] with other sysfs and procfs roots (tests).
pub fn completion_cpus_at<P: AsRef<Path>>(
    sys: &Path,
    proc_root: &Path,
    paths: &[P],
) -> Option<BTreeSet<usize>> {
    let mut out = BTreeSet::new();
    if paths.is_empty() {
        return None;
    }
    for p in paths {
        let md = std::fs::metadata(p.as_ref()).ok()?;
        let dev = if md.file_type().is_block_device() {
            md.rdev()
        } else {
            md.dev()
        };
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        out.extend(device_cpus(sys, proc_root, major, minor)?);
    }
    (!out.is_empty()).then_some(out)
}

/// The CPUs of the interrupts of block device `major:minor`.
pub fn device_cpus(
    sys: &Path,
    proc_root: &Path,
    major: u32,
    minor: u32,
) -> Option<BTreeSet<usize>> {
    let link = sys.join(format!("dev/block/{major}:{minor}"));
    let dir = std::fs::canonicalize(link).ok()?;
    let devices = std::fs::canonicalize(sys.join("devices")).ok()?;
    let irqs = irqs_above(&dir, &devices)?;
    let mut out = BTreeSet::new();
    for irq in irqs {
        let base = proc_root.join(format!("irq/{irq}"));
        let list = std::fs::read_to_string(base.join("effective_affinity_list"))
            .or_else(|_| std::fs::read_to_string(base.join("smp_affinity_list")))
            .ok()?;
        out.extend(parse_cpu_list(&list)?);
    }
    (!out.is_empty()).then_some(out)
}

/// The interrupts of the nearest ancestor of `dir` (itself included, up to `stop`) that
/// raises any: MSI / MSI-X vectors, else a legacy line.
fn irqs_above(dir: &Path, stop: &Path) -> Option<Vec<u32>> {
    let mut cur: PathBuf = dir.to_path_buf();
    while cur.starts_with(stop) && cur != stop {
        if let Ok(rd) = std::fs::read_dir(cur.join("msi_irqs")) {
            let mut v: Vec<u32> = rd
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            if !v.is_empty() {
                v.sort_unstable();
                return Some(v);
            }
        }
        if let Ok(s) = std::fs::read_to_string(cur.join("irq")) {
            if let Ok(n) = s.trim().parse::<u32>() {
                if n > 0 {
                    return Some(vec![n]);
                }
            }
        }
        if !cur.pop() {
            break;
        }
    }
    None
}

/// Parses a kernel CPU list ("0-3,5").
pub fn parse_cpu_list(s: &str) -> Option<BTreeSet<usize>> {
    let mut out = BTreeSet::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse().ok()?);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("1\n"), Some(BTreeSet::from([1])));
        assert_eq!(parse_cpu_list("0-2,5"), Some(BTreeSet::from([0, 1, 2, 5])));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    #[test]
    fn finds_the_msi_vectors_of_a_virtio_disk_and_a_partition() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        let proc_root = t.path().join("proc");
        let pci = sys.join("devices/pci0000:00/0000:00:02.0");
        let disk = pci.join("virtio1/block/vda");
        std::fs::create_dir_all(disk.join("vda1")).unwrap();
        std::fs::create_dir_all(pci.join("msi_irqs/35")).unwrap();
        std::fs::create_dir_all(pci.join("msi_irqs/36")).unwrap();
        write(&proc_root.join("irq/35/effective_affinity_list"), "1\n");
        write(&proc_root.join("irq/36/effective_affinity_list"), "1\n");
        std::fs::create_dir_all(sys.join("dev/block")).unwrap();
        std::os::unix::fs::symlink(&disk, sys.join("dev/block/254:0")).unwrap();
        std::os::unix::fs::symlink(disk.join("vda1"), sys.join("dev/block/254:1")).unwrap();
        assert_eq!(
            device_cpus(&sys, &proc_root, 254, 0),
            Some(BTreeSet::from([1]))
        );
        assert_eq!(
            device_cpus(&sys, &proc_root, 254, 1),
            Some(BTreeSet::from([1]))
        );
        // A vector moved to CPU 0: both CPUs take completions.
        write(&proc_root.join("irq/36/effective_affinity_list"), "0\n");
        assert_eq!(
            device_cpus(&sys, &proc_root, 254, 0),
            Some(BTreeSet::from([0, 1]))
        );
        // No interrupt anywhere above (a loop device): unknown.
        let lo = sys.join("devices/virtual/block/loop0");
        std::fs::create_dir_all(&lo).unwrap();
        std::os::unix::fs::symlink(&lo, sys.join("dev/block/7:0")).unwrap();
        assert_eq!(device_cpus(&sys, &proc_root, 7, 0), None);
        assert_eq!(device_cpus(&sys, &proc_root, 8, 0), None, "no such device");
    }
}
