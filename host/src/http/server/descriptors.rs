//! The process's descriptor limit (`RLIMIT_NOFILE`, the soft one) and the
//! connection budget derived from it.

/// Descriptors kept back from connections, at least: the database (the
/// SQLite files, or the PostgreSQL pool, 16 by default), rule and event
/// files, broker and gateway connections, the runtime's own (epoll, timers).
pub(super) const RESERVE_MIN: u64 = 64;

/// The budget when the limit is unknown or unlimited: no connection count
/// then; only running out of descriptors sheds.
pub(super) const UNBOUNDED: usize = usize::MAX;

/// Connections the server keeps open at most under `limit` descriptors: the
/// limit less a reserve of an eighth of it, at least [`RESERVE_MIN`] and at
/// most half of it (a process with very few descriptors still serves some).
pub(super) fn budget_under(limit: u64) -> usize {
    let reserve = (limit / 8).max(RESERVE_MIN).min(limit / 2);
    usize::try_from(limit - reserve).unwrap_or(UNBOUNDED).max(1)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one, as servers do at start
/// (Go's runtime does it for every program): the soft limit is often 1,024
/// by default, a few hundred slow clients' worth, while the hard limit an
/// operator set (systemd's `LimitNOFILE=`, `ulimit -Hn`) is what the host
/// may really use. An unlimited hard limit leaves the soft one as it is,
/// so that the connection budget stays a number. Returns the limits before
/// and after, when it raised them.
#[cfg(unix)]
pub(super) fn raise_to_hard_limit() -> Option<(u64, u64)> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), Some(hard)) = (limit.current, limit.maximum) else { return None };
    if soft >= hard {
        return None;
    }
    match setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) }) {
        Ok(()) => Some((soft, hard)),
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "could not raise the descriptor limit to its hard limit");
            None
        }
    }
}

#[cfg(not(unix))]
pub(super) fn raise_to_hard_limit() -> Option<(u64, u64)> {
    None
}

/// The soft `RLIMIT_NOFILE`, or `None` when unlimited or unknown.
#[cfg(unix)]
pub(super) fn descriptor_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(not(unix))]
pub(super) fn descriptor_limit() -> Option<u64> {
    None
}

/// Whether an `accept` failed for want of descriptors (EMFILE: the
/// process's limit; ENFILE: the system's).
#[cfg(unix)]
pub(super) fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(Errno::from_io_error(e), Some(Errno::MFILE | Errno::NFILE))
}

#[cfg(not(unix))]
pub(super) fn is_out_of_descriptors(_: &std::io::Error) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_a_reserve_of_an_eighth_and_at_least_64() {
        assert_eq!(budget_under(256), 192);
        assert_eq!(budget_under(1024), 896);
        assert_eq!(budget_under(65_536), 57_344);
        assert_eq!(budget_under(100), 50, "at most half is kept back");
        assert_eq!(budget_under(1), 1);
        assert_eq!(budget_under(0), 1);
    }

    #[cfg(unix)]
    #[test]
    fn emfile_and_enfile_are_out_of_descriptors() {
        use rustix::io::Errno;
        for errno in [Errno::MFILE, Errno::NFILE] {
            assert!(is_out_of_descriptors(&std::io::Error::from_raw_os_error(errno.raw_os_error())));
        }
        assert!(!is_out_of_descriptors(&std::io::Error::from_raw_os_error(Errno::CONNABORTED.raw_os_error())));
        assert!(!is_out_of_descriptors(&std::io::Error::other("no errno")));
        assert!(descriptor_limit().is_some_and(|limit| limit > 0));
    }
}
