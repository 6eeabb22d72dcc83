//! What a benchmark reads about a process (itself, or a child it started):
//! CPU time used, resident memory, and the open-files limit it needs.
//!
//! Linux only: the figures come from `/proc/<pid>/stat` and
//! `/proc/<pid>/status`. Elsewhere every reading is an
//! [`io::Error`] (the file does not exist), which a
//! benchmark may print as "unknown" rather than fail on.

use std::io;

/// Clock ticks per second of the CPU times in `/proc/<pid>/stat`. They are
/// counted in `USER_HZ`, which the kernel fixes at 100 for user space on
/// every architecture it supports (whatever its internal tick rate).
const USER_HZ: f64 = 100.0;

/// User + system CPU seconds process `pid` has used so far, all its threads
/// together, in steps of 10 ms. A benchmark subtracts two readings to learn
/// what a phase cost, which is meaningful only over phases of a second or
/// more.
///
/// # Errors
///
/// The process does not exist (or `/proc` does not), or its `stat` line
/// cannot be read as the kernel writes it.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_seconds(&stat)
}

/// [`cpu_seconds`] of the calling process.
///
/// # Errors
///
/// As [`cpu_seconds`].
pub fn own_cpu_seconds() -> io::Result<f64> {
    cpu_seconds(std::process::id())
}

fn parse_cpu_seconds(stat: &str) -> io::Result<f64> {
    // The command name is parenthesised and may hold spaces and
    // parentheses itself: the fields that follow start after the last `)`.
    // utime and stime are the 12th and 13th of them (14th and 15th of the
    // line, see proc_pid_stat(5)).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| invalid(format!("no command name in {stat:?}")))?;
    let mut fields = rest.split_whitespace().skip(11);
    let mut ticks = || -> io::Result<f64> {
        let field = fields
            .next()
            .ok_or_else(|| invalid(format!("too few fields in {stat:?}")))?;
        field
            .parse::<u64>()
            .map(|t| t as f64)
            .map_err(|e| invalid(format!("CPU ticks {field:?}: {e}")))
    };
    Ok((ticks()? + ticks()?) / USER_HZ)
}

/// Resident memory of a process, in KiB (the kernel's "kB").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident now (`VmRSS`).
    pub rss_kb: u64,
    /// The most it has been resident (`VmHWM`, the high-water mark).
    pub peak_kb: u64,
}

/// [`Memory`] of process `pid`.
///
/// # Errors
///
/// The process does not exist, or its `status` has no `VmRSS` or `VmHWM`
/// line (a zombie, or a kernel thread).
pub fn memory(pid: u32) -> io::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_memory(&status)
}

/// [`memory`] of the calling process.
///
/// # Errors
///
/// As [`memory`].
pub fn own_memory() -> io::Result<Memory> {
    memory(std::process::id())
}

fn parse_memory(status: &str) -> io::Result<Memory> {
    let field = |name: &str| -> io::Result<u64> {
        let value = status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .ok_or_else(|| invalid(format!("no {name} line")))?;
        let kb = value.trim().trim_end_matches("kB").trim();
        kb.parse()
            .map_err(|e| invalid(format!("{name} {kb:?}: {e}")))
    };
    Ok(Memory {
        rss_kb: field("VmRSS")?,
        peak_kb: field("VmHWM")?,
    })
}

/// Raises this process's soft limit on open files towards `needed`
/// (children inherit it), as far as the hard limit allows, and returns the
/// soft limit in force afterwards: a caller that cannot run with less than
/// `needed` compares. Never lowers the limit. A benchmark with thousands of
/// connections needs more than the usual 1 024.
///
/// # Errors
///
/// The limit cannot be read or set.
pub fn raise_fd_limit(needed: u64) -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft >= needed {
        return Ok(soft);
    }
    let raised = needed.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, raised, hard).map_err(io::Error::from)?;
    Ok(raised)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces_and_parentheses() {
        // proc_pid_stat(5): pid (comm) state ppid … utime stime …
        let stat = "4242 (my (odd) bench) R 1 4242 4242 0 -1 4194304 \
                    120 0 0 0 250 37 0 0 20 0 3 0 12345 1000000 200";
        assert_eq!(parse_cpu_seconds(stat).unwrap(), 2.87);
    }

    #[test]
    fn a_truncated_or_garbled_stat_line_is_an_error_not_a_panic() {
        for stat in [
            "",
            "4242 (x) R 1 2 3",
            "4242 (x) R 1 2 3 4 5 6 7 8 9 10 -5 7",
        ] {
            let err = parse_cpu_seconds(stat).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{stat:?}");
        }
    }

    #[test]
    fn memory_is_read_from_the_rss_and_high_water_lines() {
        let status = "Name:\tbench\nVmPeak:\t  900000 kB\nVmHWM:\t   20480 kB\n\
                      VmRSS:\t   10240 kB\nVmRSSFile:\t 1 kB\n";
        assert_eq!(
            parse_memory(status).unwrap(),
            Memory {
                rss_kb: 10_240,
                peak_kb: 20_480
            }
        );
        let err = parse_memory("Name:\tkthreadd\n").unwrap_err();
        assert!(err.to_string().contains("VmRSS"), "{err}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_read_and_its_cpu_time_does_not_go_backwards() {
        let before = own_cpu_seconds().unwrap();
        // Spin for about 50 ms of CPU: more than the 10 ms resolution.
        let started = std::time::Instant::now();
        let mut x = 0_u64;
        while started.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = own_cpu_seconds().unwrap();
        assert!(after >= before, "{before} then {after}");
        let memory = own_memory().unwrap();
        assert!(
            memory.rss_kb > 0 && memory.peak_kb >= memory.rss_kb,
            "{memory:?}"
        );
        assert!(cpu_seconds(u32::MAX).is_err(), "no such process");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_open_files_limit_is_never_lowered_and_stops_at_the_hard_limit() {
        use nix::sys::resource::{Resource, getrlimit};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(raise_fd_limit(1).unwrap(), soft, "never lowered");
        // Past the hard limit: raised to it, and the caller is told so.
        if let Some(beyond) = hard.checked_add(1) {
            assert_eq!(raise_fd_limit(beyond).unwrap(), hard);
        }
    }
}
