//! CPU time of processes, read from `/proc` (Linux): this process, and every PostgreSQL
//! server process, so a baseline's cost per operation counts the database's share as the
//! gateway's figure does.

use std::fs;

/// utime + stime of `/proc/<pid>/stat`, in clock ticks (`getconf CLK_TCK`, 100 here).
fn ticks_of(stat: &str) -> Option<(String, u64)> {
    // comm is in parentheses and may hold spaces: split after the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// This process's CPU ticks (every thread).
pub(crate) fn self_ticks() -> u64 {
    fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| ticks_of(&s))
        .map_or(0, |(_, t)| t)
}

/// CPU ticks of every process named `postgres` (the server and its backends). Backends that
/// exit between two readings take their ticks with them, so callers keep connections open
/// across a measurement (pools do).
pub(crate) fn postgres_ticks() -> u64 {
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| ticks_of(&s))
        .filter(|(comm, _)| comm == "postgres")
        .map(|(_, t)| t)
        .sum()
}

/// Clock ticks per second.
pub(crate) fn clk_tck() -> f64 {
    // The kernel's USER_HZ is 100 on every Linux this runs on; `getconf CLK_TCK` confirms.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU ticks of this process and of PostgreSQL, read together.
#[derive(Clone, Copy)]
pub(crate) struct Reading {
    own: u64,
    pg: u64,
}

impl Reading {
    /// Read now.
    pub(crate) fn now() -> Self {
        Self {
            own: self_ticks(),
            pg: postgres_ticks(),
        }
    }

    /// (own, postgres) CPU seconds since `self`.
    pub(crate) fn since(&self) -> (f64, f64) {
        let later = Self::now();
        let hz = clk_tck();
        (
            later.own.saturating_sub(self.own) as f64 / hz,
            later.pg.saturating_sub(self.pg) as f64 / hz,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::ticks_of;

    #[test]
    fn stat_line_with_spaces_in_comm_parses() {
        let line = "42 (post gres) S 1 2 3 4 5 6 7 8 9 10 111 222 0 0";
        assert_eq!(ticks_of(line), Some(("post gres".to_string(), 333)));
    }
}
