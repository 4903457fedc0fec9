//! Readings of a process from /proc: its CPU time, its resident memory, its open descriptors and
//! the datagrams the kernel dropped at its UDP sockets.

use anyhow::Context;

/// CPU time (user + system) of a process, µs, from /proc/<pid>/stat.
pub fn cpu_us(pid: &str) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the file; after the ")" they are the 12th and 13th.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000 / hz)
}

/// Time on a CPU of each live thread of a process, ns, by thread id, from
/// /proc/<pid>/task/<tid>/schedstat (its first field). Unlike /proc/<pid>/stat's 10 ms ticks it
/// is precise enough for a few hundred frames of some tens of µs; threads that have ended are
/// not in it.
pub fn threads_cpu_ns(pid: &str) -> std::collections::BTreeMap<String, u64> {
    let mut found = std::collections::BTreeMap::new();
    for task in tasks(pid) {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        if let Some(ns) = stat.split_whitespace().next().and_then(|v| v.parse().ok()) {
            found.insert(task.file_name().to_string_lossy().into_owned(), ns);
        }
    }
    found
}

/// Time on a CPU, ns (schedstat, as [`threads_cpu_ns`]), of the live threads of a process named
/// exactly `name`, summed.
pub fn named_threads_cpu_ns(pid: &str, name: &str) -> u64 {
    let names = thread_names(pid);
    threads_cpu_ns(pid)
        .into_iter()
        .filter(|(tid, _)| names.get(tid).is_some_and(|n| n == name))
        .map(|(_, ns)| ns)
        .sum()
}

/// The name (`comm`) of each live thread of a process, by thread id.
pub fn thread_names(pid: &str) -> std::collections::BTreeMap<String, String> {
    tasks(pid)
        .map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            (
                task.file_name().to_string_lossy().into_owned(),
                name.trim_end().to_owned(),
            )
        })
        .collect()
}

/// Resident set size of a process, KiB, from /proc/<pid>/status.
pub fn rss_kib(pid: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("odd VmRSS")?
        .parse()?)
}

/// Open file descriptors of a process.
pub fn fd_count(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A process's open descriptors: each one's number and what it points at (empty if it closed
/// while being read).
fn fd_links(pid: &str) -> impl Iterator<Item = (std::ffi::OsString, std::path::PathBuf)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            (
                e.file_name(),
                std::fs::read_link(e.path()).unwrap_or_default(),
            )
        })
}

/// What each open descriptor of a process is (`socket:[…]`, a path, `anon_inode:[eventfd]`).
pub fn fd_targets(pid: &str) -> Vec<String> {
    let mut t: Vec<String> = fd_links(pid)
        .map(|(fd, link)| format!("{}→{}", fd.to_string_lossy(), link.display()))
        .collect();
    t.sort();
    t
}

/// Datagrams dropped by the kernel at a process's UDP sockets, from `/proc/<pid>/net/udp{,6}`
/// (its sockets found by inode among its descriptors).
pub fn udp_drops(pid: &str) -> u64 {
    let inodes: std::collections::HashSet<String> = fd_links(pid)
        .filter_map(|(_, l)| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let mut drops = 0;
    for table in ["udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            if f.len() >= 13 && inodes.contains(f[9]) {
                drops += f[12].parse::<u64>().unwrap_or(0);
            }
        }
    }
    drops
}

/// The threads of a process whose name starts with `prefix`: each one's name and CPU time
/// (user + system), µs, from /proc/<pid>/task/<tid>/stat.
pub fn threads_cpu_us(pid: &str, prefix: &str) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for task in tasks(pid) {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let name = name.trim_end();
        if !name.starts_with(prefix) {
            continue;
        }
        let tid = task.file_name().to_string_lossy().into_owned();
        if let Ok(us) = cpu_us(&format!("{pid}/task/{tid}")) {
            found.push((name.to_string(), us));
        }
    }
    found
}

/// The entries of /proc/<pid>/task: one per live thread.
fn tasks(pid: &str) -> impl Iterator<Item = std::fs::DirEntry> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
}
