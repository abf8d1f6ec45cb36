//! The crate's error type.

use std::fmt;

/// Why pprofd could not start.
#[derive(Debug)]
pub enum Error {
    /// The listen address could not be understood.
    InvalidAddress {
        /// Where the address came from: the environment variable or `Config`.
        source_name: &'static str,
        /// The address as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The address was understood but could not be bound.
    Bind {
        /// The address as given.
        value: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The server thread could not be started.
    Spawn(std::io::Error),
    /// `PPROF_BLOCK_RATE` is not a rate pprofd accepts.
    InvalidBlockRate {
        /// The value as given.
        value: String,
    },
    /// Continuous block sampling could not start.
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    BlockSampling(crate::offcpu::BlockProfileError),
    /// `PPROF_TOKIO_TASKS` is not one of the values pprofd accepts.
    InvalidTokioTasks {
        /// The value as given.
        value: String,
    },
    /// The flight recorder's window or rate (`PPROF_RECORD`, `PPROF_RECORD_HZ` or
    /// `Config::record`) is not one pprofd accepts.
    InvalidRecord {
        /// Where the value came from: the environment variable or `Config`.
        source_name: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The flight recorder could not start sampling.
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    Recording(crate::cpu::CpuProfileError),
    /// pprofd does not serve profiles on this platform (only Linux on x86_64 and aarch64);
    /// returned by `Server::start` elsewhere, never on Linux.
    Unsupported {
        /// This target, as `macos/aarch64`.
        platform: String,
        /// The address the server was asked to listen on.
        addr: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidAddress {
                source_name,
                value,
                reason,
            } => {
                write!(f, "{source_name}={value:?} is not a listen address: {reason} (try 127.0.0.1:6060 or :6060)")
            }
            Error::Bind { value, source } => write!(f, "cannot listen on {value}: {source}"),
            Error::Spawn(e) => write!(f, "cannot start the pprof server thread: {e}"),
            Error::InvalidBlockRate { value } => write!(
                f,
                "{}={value:?} is not a sampling rate: want a whole number of samples a second from 1 to 1000, or unset for none",
                crate::BLOCK_RATE_ENV
            ),
            #[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
            Error::BlockSampling(e) => write!(f, "cannot start continuous block sampling: {e}"),
            Error::InvalidTokioTasks { value } => write!(
                f,
                "{}={value:?} is not understood: want `current-thread` (the default) or `all`",
                crate::TOKIO_TASKS_ENV
            ),
            Error::InvalidRecord {
                source_name,
                value,
                reason,
            } => write!(
                f,
                "{source_name}={value:?} is not understood: {reason} (the window is a duration such as 10m, 1h or 300s; the rate 1 to 1000 samples a second)"
            ),
            #[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
            Error::Recording(e) => write!(f, "cannot start the flight recorder: {e}"),
            Error::Unsupported { platform, addr } => write!(
                f,
                "cannot serve profiles on {addr}: pprofd profiles only on Linux (x86_64, aarch64), not {platform}"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. } | Error::Spawn(source) => Some(source),
            #[cfg(all(
                target_os = "linux",
                any(target_arch = "x86_64", target_arch = "aarch64")
            ))]
            Error::BlockSampling(e) => Some(e),
            #[cfg(all(
                target_os = "linux",
                any(target_arch = "x86_64", target_arch = "aarch64")
            ))]
            Error::Recording(e) => Some(e),
            Error::InvalidAddress { .. }
            | Error::InvalidRecord { .. }
            | Error::InvalidBlockRate { .. }
            | Error::InvalidTokioTasks { .. }
            | Error::Unsupported { .. } => None,
        }
    }
}
